"""GET /ca.crt: the local CA certificate, so edge hosts can be set up to trust the appliance.

Anonymous on purpose: the CA certificate is public, and a host that does
not trust the appliance yet has no other way to fetch it. Operators should
compare its fingerprint (`openssl x509 -noout -fingerprint -sha256`) with
the one `cargohold tls ca` shows on the appliance's console.
"""

from __future__ import annotations

from flask import Blueprint, Response, jsonify, send_file

from web.config import Config
from web.tls import generated_ca

CA_MEDIA_TYPE = "application/x-pem-file"


def create_blueprint(config: Config) -> Blueprint:
    """The blueprint serving /ca.crt for one appliance's configuration."""
    bp = Blueprint("tls", __name__)

    @bp.get("/ca.crt")
    def ca_certificate() -> Response:
        path = generated_ca(config)
        if path is None:
            if config.tls_cert is not None:
                message = ("this appliance serves an operator-provided certificate; get the CA that issued "
                           "it from whoever issued it")
            else:
                message = ("no local CA has been generated: start the appliance with `cargohold serve --tls` "
                           "(and no --tls-cert/--tls-key) to create one")
            response = jsonify({"errors": [{"code": "NOT_FOUND", "message": message}]})
            response.status_code = 404
            return response
        # Read per request, not cached: small, and a regenerated CA must show at once.
        response = send_file(path, mimetype=CA_MEDIA_TYPE, as_attachment=True, download_name="ca.crt",
                             max_age=0)
        return response

    return bp
