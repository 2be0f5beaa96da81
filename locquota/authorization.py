"""Asking the policy (oslo.policy, with the rules of locquota.policies) whether a caller may do something.

The enforcer is built once, at start: the defaults registered, then the operator's policy file, checked
there and then (a YAML error, a rule no one registered, a reference to a rule that does not exist), so a
typo refuses to start instead of silently denying or allowing at the first request. Scope is enforced
and the new (secure RBAC) defaults are used, as Glance runs them.
"""

import os
from collections.abc import Hashable, Mapping
from pathlib import Path

import yaml
from oslo_config import cfg
from oslo_policy import policy

from locquota.policies import list_rules
from locquota.settings import SettingsError

MAX_REMEMBERED_DECISIONS = 100_000  # a bound on memory; forgetting all at once is simple and rare


def _frozen(values: Mapping[str, object]) -> Hashable:
    """A hashable form of a target or credentials (lists, such as roles, become tuples)."""
    return tuple(sorted((name, tuple(value) if isinstance(value, list) else value) for name, value in values.items()))


class Policy:
    """The rules in force, and the one question asked of them: may these credentials do this rule to this target."""

    def __init__(self, policy_file: str = "") -> None:
        conf = cfg.ConfigOpts()
        conf([], project="locquota", default_config_files=[], default_config_dirs=[])
        self._enforcer = policy.Enforcer(conf, policy_file=policy_file or None, use_conf=True)
        self._enforcer.register_defaults(list_rules())
        # oslo.policy 6 always enforces scope (a system or domain token fails every project rule) and uses
        # the new defaults only (enforce_new_defaults is true unless an operator's config says otherwise).
        if policy_file:
            check_policy_file(Path(policy_file), {rule.name for rule in list_rules()})
        self._enforcer.load_rules(force_reload=True)
        try:
            self._enforcer.check_rules(raise_on_violation=True)
        except policy.InvalidDefinitionError as exc:
            raise SettingsError(f"locquota.policy_file = {policy_file!r}: {exc}") from None
        # Loaded and checked once: oslo.policy would otherwise look for changed files on every check
        # (measured: about half of a check's cost). A changed policy file takes effect at the next start.
        self._enforcer.use_conf = False
        self._decisions: dict[tuple[str, Hashable, Hashable], bool] = {}

    @property
    def enforcer(self) -> policy.Enforcer:
        """The oslo.policy enforcer (the oslo.policy.enforcer entry point hands it to the generators)."""
        return self._enforcer

    def allows(self, rule: str, target: Mapping[str, object], credentials: Mapping[str, object]) -> bool:
        """Whether the rule holds; a token of the wrong scope (system, domain) never passes a project rule.

        The rules are fixed once loaded, so a decision depends only on its arguments: the same question
        (same rule, target and credentials, as the next request of the same caller asks) is answered
        from memory. An oslo.policy check costs about 0.1 ms (it inspects each check's signature).
        """
        key = (rule, _frozen(target), _frozen(credentials))
        decision = self._decisions.get(key)
        if decision is None:
            try:
                decision = bool(self._enforcer.enforce(rule, dict(target), dict(credentials), do_raise=False))
            except policy.InvalidScope:
                decision = False
            if len(self._decisions) >= MAX_REMEMBERED_DECISIONS:
                self._decisions.clear()
            self._decisions[key] = decision
        return decision


def check_policy_file(path: Path, known_rules: set[str]) -> None:
    """Refuse a policy file that does not parse or names a rule locquota does not have, with file and line."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise SettingsError(f"locquota.policy_file = {str(path)!r}: {exc.strerror}") from None
    try:
        rules = yaml.safe_load(text) or {}
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        line = f":{mark.line + 1}" if mark is not None else ""
        raise SettingsError(f"{path}{line}: not valid YAML: {exc.problem}") from None
    except yaml.YAMLError as exc:
        raise SettingsError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(rules, dict) or not all(isinstance(value, str) for value in rules.values()):
        raise SettingsError(f"{path}: a policy file maps rule names to check strings")
    for name in rules:
        if name not in known_rules:
            line = next((number for number, text in enumerate(text.splitlines(), 1) if str(name) in text), 0)
            raise SettingsError(f"{path}:{line}: unknown rule {name!r} (`oslopolicy-sample-generator` lists them)")


def get_enforcer() -> policy.Enforcer:
    """The oslo.policy.enforcer entry point, for oslopolicy-policy-generator and oslopolicy-checker.

    The defaults, merged with the policy file that LOCQUOTA_POLICY_FILE names (the .ini's
    locquota.policy_file, which the generators cannot read).
    """
    return Policy(os.environ.get("LOCQUOTA_POLICY_FILE", "")).enforcer
