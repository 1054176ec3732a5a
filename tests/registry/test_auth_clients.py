"""Real clients through Harbor's token flow: podman login/push/pull, skopeo with a robot, ctr --user.

The appliance answers every anonymous or unauthorised /v2/ request with a
``Bearer realm=".../service/token"`` challenge, so podman, skopeo and
containerd fetch a token with their credentials and retry with it; the
request log shows the token requests. Images are checked by digest.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.appliance import Appliance
from tests.containerd import Containerd
from tests.logs import request_lines
from tests.registry.conftest import SourceImages, require, run
from tests.registry.harborapi import Harbor, RobotAccount


def _token_requests(appliance: Appliance) -> int:
    return sum(1 for r in request_lines(appliance.log()) if r["method"] == "GET" and r["path"] == "/service/token")


def skopeo_copy(src: str, dest: str, *creds: str, check: bool = True) -> tuple[int, str]:
    proc = run("skopeo", "copy", "--src-tls-verify=false", "--dest-tls-verify=false", *creds, src, dest,
               check=check)
    return proc.returncode, proc.stdout + proc.stderr


def remote_digest(appliance: Appliance, ref: str, *creds: str) -> str:
    out = run("skopeo", "inspect", "--tls-verify=false", *(creds or ("--no-creds",)),
              f"docker://{appliance.host}/{ref}").stdout
    return str(json.loads(out)["Digest"])


@pytest.fixture(scope="module")
def private_project(appliance: Appliance) -> str:
    return Harbor(appliance, appliance.admin).create_project(public=False)


@pytest.fixture(scope="module")
def seeded(appliance: Appliance, source: SourceImages, private_project: str) -> str:
    """multi:1 pushed by the admin into the private project; returns its repository."""
    require("skopeo")
    repo = f"{private_project}/seed/img"
    skopeo_copy(f"oci:{source.path}:multi:1", f"docker://{appliance.host}/{repo}:1", "--dest-creds", appliance.creds)
    return repo


@pytest.fixture(scope="module")
def podman_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """podman as root with vfs storage, graph/run roots and auth file in a temporary directory."""
    require("podman")
    base = tmp_path_factory.mktemp("podman-auth")
    (base / "storage.conf").write_text(f'[storage]\ndriver = "vfs"\ngraphroot = "{base / "graph"}"\n'
                                       f'runroot = "{base / "run"}"\n')
    (base / "containers.conf").write_text(f'[engine]\nevents_logger = "file"\n'
                                          f'events_logfile_path = "{base / "events.log"}"\n'
                                          f'cgroup_manager = "cgroupfs"\ntmp_dir = "{base / "tmp"}"\n')
    (base / "auth.json").write_text('{"auths": {}}')
    env = {**os.environ, "CONTAINERS_STORAGE_CONF": str(base / "storage.conf"),
           "CONTAINERS_CONF": str(base / "containers.conf"), "REGISTRY_AUTH_FILE": str(base / "auth.json"),
           "TMPDIR": str(base)}
    yield env
    run("podman", "rmi", "--all", "--force", env=env, check=False)


def test_podman_login_push_pull_through_token_flow(appliance: Appliance, podman_env: dict[str, str],
                                                   private_project: str, seeded: str, source: SourceImages) -> None:
    admin = Harbor(appliance, appliance.admin)
    robot = admin.project_robot(private_project, ("pull", "push"))
    before = _token_requests(appliance)
    run("podman", "login", "--tls-verify=false", "--username", robot.name, "--password-stdin", appliance.host,
        env=podman_env, input=robot.secret)
    assert run("podman", "login", "--get-login", appliance.host, env=podman_env).stdout.strip() == robot.name
    run("podman", "pull", "--tls-verify=false", f"{appliance.host}/{seeded}:1", env=podman_env)
    pushed = f"{appliance.host}/{private_project}/podman/img:2"
    run("podman", "tag", f"{appliance.host}/{seeded}:1", pushed, env=podman_env)
    run("podman", "push", "--tls-verify=false", pushed, env=podman_env)
    run("podman", "rmi", "--force", pushed, f"{appliance.host}/{seeded}:1", env=podman_env)
    run("podman", "pull", "--tls-verify=false", pushed, env=podman_env)
    layers = json.loads(run("podman", "image", "inspect", pushed, env=podman_env).stdout)[0]["RootFS"]["Layers"]
    assert len(layers) == 3
    assert _token_requests(appliance) > before, "podman never asked the token service"
    # The image is private: anonymous clients cannot see it.
    proc = run("skopeo", "inspect", "--tls-verify=false", "--no-creds",
               f"docker://{pushed}", check=False)
    assert proc.returncode != 0
    assert remote_digest(appliance, f"{private_project}/podman/img:2", "--creds", robot.creds)


def test_podman_login_refuses_wrong_secret(appliance: Appliance, podman_env: dict[str, str],
                                           private_project: str) -> None:
    robot = Harbor(appliance, appliance.admin).project_robot(private_project, ("pull",))
    proc = run("podman", "login", "--tls-verify=false", "--username", robot.name, "--password-stdin",
               appliance.host, env=podman_env, input="Wrong-secret-1", check=False)
    assert proc.returncode != 0
    assert "invalid username/password" in proc.stderr, proc.stderr


def test_skopeo_with_robot_creds(appliance: Appliance, source: SourceImages, private_project: str, seeded: str,
                                 tmp_path: Path) -> None:
    admin = Harbor(appliance, appliance.admin)
    puller = admin.project_robot(private_project, ("pull",))
    pusher = admin.project_robot(private_project, ("pull", "push"))
    expected = remote_digest(appliance, f"{seeded}:1", "--creds", appliance.creds)
    # pull with a pull-only robot
    code, out = skopeo_copy(f"docker://{appliance.host}/{seeded}:1", f"oci:{tmp_path / 'out'}:x",
                            "--src-creds", puller.creds)
    assert code == 0, out
    assert remote_digest(appliance, f"{seeded}:1", "--creds", puller.creds) == expected
    # the pull-only robot cannot push
    target = f"docker://{appliance.host}/{private_project}/skopeo/img:1"
    code, out = skopeo_copy(f"oci:{source.path}:multi:1", target, "--dest-creds", puller.creds, check=False)
    assert code != 0 and ("unauthorized" in out.lower() or "denied" in out.lower()), out
    # the pushing robot can
    code, out = skopeo_copy(f"oci:{source.path}:multi:1", target, "--dest-creds", pusher.creds)
    assert code == 0, out
    assert remote_digest(appliance, f"{private_project}/skopeo/img:1", "--creds", pusher.creds) == \
        source.image.digest
    # and a robot of another project cannot read this one
    other = admin.create_project(public=False)
    stranger = admin.project_robot(other, ("pull", "push"))
    proc = run("skopeo", "inspect", "--tls-verify=false", "--creds", stranger.creds, f"docker://{appliance.host}/"
               f"{seeded}:1", check=False)
    assert proc.returncode != 0


def test_ctr_pull_with_user(appliance: Appliance, containerd: Containerd, private_project: str, seeded: str,
                            source: SourceImages) -> None:
    robot: RobotAccount = Harbor(appliance, appliance.admin).project_robot(private_project, ("pull",))
    ref = f"{appliance.host}/{seeded}:1"
    refused = containerd.ctr("images", "pull", "--plain-http", ref, check=False)
    assert refused.returncode != 0
    assert "401" in refused.stderr or "unauthorized" in refused.stderr.lower(), refused.stderr
    before = _token_requests(appliance)
    containerd.ctr("images", "pull", "--plain-http", "--user", robot.creds, ref)
    assert containerd.image_digest(ref) == source.image.digest
    assert _token_requests(appliance) > before, "containerd never asked the token service"
    containerd.ctr("images", "rm", ref)


def test_anonymous_pull_of_public_project_works_and_of_private_is_denied(
        appliance: Appliance, source: SourceImages, repo: str, seeded: str, tmp_path: Path) -> None:
    skopeo_copy(f"oci:{source.path}:multi:1", f"docker://{appliance.host}/{repo}:1", "--dest-creds",
                appliance.creds)
    # public (the default project): skopeo without credentials, through the anonymous token flow
    code, out = skopeo_copy(f"docker://{appliance.host}/{repo}:1", f"oci:{tmp_path / 'pub'}:x", "--src-no-creds")
    assert code == 0, out
    assert remote_digest(appliance, f"{repo}:1") == source.image.digest
    # and plain HTTP without any token: public pulls need no handshake at all
    r = requests.get(f"{appliance.url}/v2/{repo}/manifests/1", timeout=30,
                     headers={"Accept": "application/vnd.oci.image.manifest.v1+json"})
    assert r.status_code == 200
    # private: refused, with the challenge naming the scope
    code, out = skopeo_copy(f"docker://{appliance.host}/{seeded}:1", f"oci:{tmp_path / 'priv'}:x", "--src-no-creds",
                            check=False)
    assert code != 0 and ("unauthorized" in out.lower() or "authentication required" in out.lower()), out
    r = requests.get(f"{appliance.url}/v2/{seeded}/manifests/1", timeout=30)
    assert r.status_code == 401
    assert r.headers["WWW-Authenticate"].endswith(f'scope="repository:{seeded}:pull"')
    anon_token = requests.get(f"{appliance.url}/service/token", timeout=30,
                              params={"service": "harbor-registry", "scope": f"repository:{seeded}:pull"}).json()
    r = requests.get(f"{appliance.url}/v2/{seeded}/manifests/1", timeout=30,
                     headers={"Authorization": f"Bearer {anon_token['token']}"})
    assert r.status_code == 401


def test_push_to_missing_project_is_refused_even_for_admin(appliance: Appliance, source: SourceImages) -> None:
    missing = f"nosuch{uuid.uuid4().hex[:8]}/img:1"
    code, out = skopeo_copy(f"oci:{source.path}:multi:1", f"docker://{appliance.host}/{missing}", "--dest-creds",
                            appliance.creds, check=False)
    # Through the token flow the token grants nothing on a missing project, so skopeo is told "unauthorized";
    # with Basic credentials straight on /v2/ the admin is told why.
    assert code != 0 and "unauthorized" in out.lower(), out
    r = requests.post(f"{appliance.url}/v2/{missing.split(':')[0]}/blobs/uploads/", auth=appliance.admin, timeout=30)
    assert r.status_code == 404 and "does not exist" in r.json()["errors"][0]["message"]
