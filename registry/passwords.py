"""The password policy for appliance users: one function every way of setting a password calls.

The CLI (`cargohold admin add-user` / `set-password`, the first start's
``CARGOHOLD_ADMIN_PASSWORD``), the UI's password page and Harbor's user API
(`registry.harbor_users`) all set passwords through `registry.auth.Users`,
which checks here, so a site has one rule. The rule
favours length over composition (NIST SP 800-63B): a passphrase of common
words is fine, a short or guessable one is not.

- at least `MIN_LENGTH` characters, at most `MAX_LENGTH` (scrypt hashes any
  length, but a megabyte "password" is a mistake, not a secret);
- not the user name, in any letter case, nor the name spelled backwards;
- not one character repeated (``aaaaaaaaaaaa``);
- no control characters (a pasted newline or tab would make a password that
  nobody can type at a login form).

The message of a refusal never quotes the password.
"""

from __future__ import annotations

import unicodedata

MIN_LENGTH = 12
MAX_LENGTH = 1024


class PasswordPolicyError(ValueError):
    """A password the policy refuses; the message says which rule, never the password."""


def check_password_policy(username: str, password: str) -> None:
    """Raise PasswordPolicyError if `password` may not be `username`'s password; return None if it may."""
    if len(password) < MIN_LENGTH:
        raise PasswordPolicyError(f"the password is too short: use at least {MIN_LENGTH} characters "
                                  f"(it has {len(password)}); a few unrelated words make a good one")
    if len(password) > MAX_LENGTH:
        raise PasswordPolicyError(f"the password is too long: at most {MAX_LENGTH} characters")
    if any(unicodedata.category(c) == "Cc" for c in password):
        raise PasswordPolicyError("the password holds a control character (a newline or tab, say); "
                                  "nobody could type it at the sign-in form")
    folded = password.casefold()
    if folded in (username.casefold(), username.casefold()[::-1]):
        raise PasswordPolicyError(f"the password may not be the user name {username!r}")
    if len(set(password)) == 1:
        raise PasswordPolicyError("the password is one character repeated")
