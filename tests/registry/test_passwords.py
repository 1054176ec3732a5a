"""The password policy (registry.passwords): which passwords it refuses, and that it never quotes them."""

from __future__ import annotations

import pytest

from registry.passwords import MAX_LENGTH, MIN_LENGTH, PasswordPolicyError, check_password_policy


@pytest.mark.parametrize(("username", "password", "rule"), [
    ("ops", "Short-1", "too short"),
    ("ops", "x" * (MIN_LENGTH - 1), "too short"),
    ("ops", "y" * (MAX_LENGTH + 1), "too long"),
    ("site-operator", "Site-Operator", "may not be the user name"),  # long enough, but the name
    ("long-user-name", "LONG-USER-NAME", "may not be the user name"),
    ("long-user-name", "eman-resu-gnol", "may not be the user name"),
    ("ops", "zzzzzzzzzzzzzzzz", "one character repeated"),
    ("ops", "pasted line\nfeed!", "control character"),
])
def test_refused_passwords_name_the_rule_and_never_the_password(username: str, password: str, rule: str) -> None:
    with pytest.raises(PasswordPolicyError, match=rule) as caught:
        check_password_policy(username, password)
    assert password not in str(caught.value)


@pytest.mark.parametrize("password", ["correct horse battery", "x" * (MIN_LENGTH - 1) + "y",
                                      "müde Wörter am Zaun", "a" * (MAX_LENGTH - 1) + "b", "ops-and-more-ops"])
def test_long_enough_passwords_pass(password: str) -> None:
    assert check_password_policy("ops", password) is None  # raises PasswordPolicyError if refused
