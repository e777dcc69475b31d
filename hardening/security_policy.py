"""The CKMS security policy (an RFC 3647 CP/CPS in short), generated, and its drift from a deployed CA.

docs/security-policy.md and docs/security-policy.ja.md answer guidance items A.01 (written policy listing the
configurable options), A.03 (subordinate policies), A.04 (superior policies) and A.57 (law). They are made
from what the project already holds, so the policy cannot say something the deployment does not do:

* the control catalog (hardening/catalog/A.yml): the items the policy answers, their checks and procedures;
* the CA configuration the ckms_ca role deploys: ``ckms ca init``'s ckms.toml (ckms_app's own writer,
  ``default_config``) with the role's defaults (roles/ckms_ca/defaults/main.yml) and the settings the role
  merges after the ceremony, optionally with an inventory's overrides (``--inventory``);
* the roles and default ACL of the daemon (ckms_app.authority.rbac) and the flow model (ckms_lab.model,
  or an inventory's ``ckms_flows``).

Each document carries the values it states in a fenced ``yaml`` block that begins ``# policy-values``
(byte-identical in both languages). :func:`drift` compares that block with a deployed ckms.toml (and the
CA certificate, for the CA's validity) and lists every difference; the hardening check
``check:A.01.policy_document_matches_deployment`` runs it against the CA host, and :func:`report_section`
/ :func:`report_markdown` give hardening.report the documents' state, the values and the recorded drift.
Most of this module's length is the text of the two languages, kept side by side so they stay in step.

The committed documents describe the role defaults (what the role deploys with no inventory override; the
lab's inventory overrides no policy value). A site whose inventory sets a policy variable (e.g.
inventories/production.example: P-384, its own OID) generates its own policy with ``--inventory``.

    python -m hardening.security_policy --write          # write docs/security-policy{,.ja}.md
    python -m hardening.security_policy --check          # exit 1 when the committed docs are stale
    python -m hardening.security_policy --inventory inventories/production.example --output-dir DIR
    python -m hardening.security_policy --drift ckms.toml [--ca-cert ca.pem]   # doc vs a deployed CA
"""

from __future__ import annotations

import argparse
import datetime as dt
import re
import sys
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from ckms_app.algorithms import CURVES
from ckms_app.authority.ceremony import InitOptions, default_config
from ckms_app.authority.rbac import DEFAULT_ACL, ROLES
from ckms_app.config import Config, parse_config
from ckms_app.errors import ConfigError
from ckms_lab import model
from hardening.catalog import Control, load_catalog

REPO = Path(__file__).resolve().parent.parent
DOC_EN = REPO / "docs" / "security-policy.md"
DOC_JA = REPO / "docs" / "security-policy.ja.md"
ROLE_DEFAULTS = REPO / "roles" / "ckms_ca" / "defaults" / "main.yml"
HOME = Path("/var/lib/ckms")

VALUES_MARK = "# policy-values"
#: the value the document states for the policy OID when the ceremony allocates one (no ckms_ca_policy_oid)
GENERATED_OID = "generated"
GENERATED_OID_RE = re.compile(r"2\.999\.\d+\.\d+\.1")

#: inventory variables that set a policy value -> the value they set (dotted key of the values block)
POLICY_VARS: dict[str, str] = {
    "ckms_ca_name": "ca.name",
    "ckms_ca_curve": "ca.curve",
    "ckms_ca_validity_days": "ca.validity_days",
    "ckms_ca_policy_oid": "ca.policy_oid",
    "ckms_ca_est_port": "server.est_port",
    "ckms_ca_crl_port": "server.crl_port",
    "ckms_ca_tls_groups": "server.tls_groups",
    "ckms_ca_tls_ciphersuites": "server.tls_ciphersuites",
    "ckms_ca_device_reenrolment": "issuance.device_reenrolment",
    "ckms_ca_clock_source": "clock.source",
    "ckms_ca_config": "(tables merged into ckms.toml)",
}
PROFILE_KEYS = ("validity_days", "key_usage", "extended_key_usage", "allowed_curves", "san_required")

#: items the policy answers (besides those that cite it in the catalog): A.02 enforcement, A.05 OID
EXTRA_ITEMS = ("A.02", "A.05")


class PolicyError(ValueError):
    """The inputs cannot be turned into a policy (a templated inventory value, no values block, ...)."""


# --------------------------------------------------------------------------------------------------
# the configuration the role deploys


def role_defaults() -> dict[str, Any]:
    data = yaml.safe_load(ROLE_DEFAULTS.read_text("utf-8")) or {}
    if not isinstance(data, dict):
        raise PolicyError(f"{ROLE_DEFAULTS}: not a mapping")
    return data


def inventory_vars(inventory: Path) -> dict[str, Any]:
    """The variables an inventory gives the CA hosts: hosts.yml ``all.vars`` and the ``ca`` group's vars,
    then group_vars all and ca (files or directories; vault-encrypted files skipped)."""
    found: dict[str, Any] = {}
    hosts = inventory / "hosts.yml"
    if hosts.is_file():
        top = (yaml.safe_load(hosts.read_text("utf-8")) or {}).get("all", {}) or {}
        found.update(top.get("vars", {}) or {})
        found.update(((top.get("children", {}) or {}).get("ca", {}) or {}).get("vars", {}) or {})
    gv = inventory / "group_vars"
    files: list[Path] = []
    for group in ("all", "ca"):
        files += [p for p in (gv / f"{group}.yml", gv / f"{group}.yaml") if p.is_file()]
        if (gv / group).is_dir():
            files += sorted(p for p in (gv / group).iterdir() if p.suffix in (".yml", ".yaml"))
    for path in files:
        text = path.read_text("utf-8")
        if text.lstrip().startswith("$ANSIBLE_VAULT"):
            continue
        data = yaml.safe_load(text) or {}
        if isinstance(data, dict):
            found.update(data)
    return found


def inventory_overrides(inventory: Path) -> dict[str, Any]:
    """The policy variables (POLICY_VARS) an inventory sets for the CA hosts, literal values only."""
    found = {k: v for k, v in inventory_vars(inventory).items() if k in POLICY_VARS}
    for name, value in found.items():
        if "{{" in yaml.safe_dump(value):
            raise PolicyError(f"{inventory}: {name} is a template; give the policy value literally")
    return found


def _typed(value: Any) -> Any:
    # as roles/ckms_ca/files/ckms-toml-merge keeps them
    if isinstance(value, str):
        if re.fullmatch(r"-?[0-9]+", value):
            return int(value)
        if value.lower() in ("true", "false"):
            return value.lower() == "true"
    return value


def deployed_toml(overrides: Mapping[str, Any] | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """(ckms.toml as the role leaves it, the role variables used): ``ckms ca init`` with the role's
    arguments, then the role's merge (roles/ckms_ca/tasks/config.yml)."""
    v = {**role_defaults(), **(overrides or {})}
    opts = InitOptions(
        curve=str(v["ckms_ca_curve"]),
        ca_name=str(v["ckms_ca_name"]),
        ca_validity_days=int(v["ckms_ca_validity_days"]),
        est_port=int(v["ckms_ca_est_port"]),
        crl_port=int(v["ckms_ca_crl_port"]),
        policy_oid=str(v["ckms_ca_policy_oid"]) or "2.999.1.1.1",  # placeholder: a random arc at init
        clock_source=str(v["ckms_ca_clock_source"]),
    )
    raw = default_config(HOME, opts, "secrets/token-pin", "hsm/softhsm2.conf")
    merge: dict[str, dict[str, Any]] = {
        "server": {
            "tls_groups": ":".join(v["ckms_ca_tls_groups"]),
            "tls_ciphersuites": ":".join(v["ckms_ca_tls_ciphersuites"]),
        },
        "lint": {"enabled": True},
        "issuance": {"device_reenrolment": v["ckms_ca_device_reenrolment"]},
        "clock": {"source": v["ckms_ca_clock_source"]},
    }
    if overrides and "ckms_ca_config" in overrides:  # an inventory's own ckms_ca_config replaces the role's
        merge = {"clock": merge["clock"], **overrides["ckms_ca_config"]}
    for table, values in merge.items():
        for key, value in values.items():
            if isinstance(value, str) and "{{" in value:
                continue  # the role's templated keys (listen address, workers, ...): no policy value
            raw.setdefault(table, {})[key] = _typed(value)
    return raw, v


# --------------------------------------------------------------------------------------------------
# policy values: the same extraction for the document and for a deployed CA


def _config(raw: dict[str, Any]) -> Config:
    return parse_config(HOME, raw)


def values_of(raw: dict[str, Any], ca_cert: x509.Certificate | None = None) -> dict[str, Any]:
    """The policy values of a ckms.toml (parsed with the daemon's own loader, so its defaults apply)."""
    cfg = _config(raw)
    oids = sorted({p.policy_oid for p in cfg.profiles.values()})
    ca: dict[str, Any] = {
        "name": cfg.ca_name,
        "curve": raw.get("ca", {}).get("curve"),
        "policy_oid": oids[0] if len(oids) == 1 else oids,
    }
    if ca_cert is not None:
        span = ca_cert.not_valid_after_utc - ca_cert.not_valid_before_utc - dt.timedelta(minutes=5)
        ca["validity_days"] = round(span.total_seconds() / 86400)
        key = ca_cert.public_key()
        ca["key_curve"] = next(
            (c.name for c in CURVES.values() if isinstance(key, ec.EllipticCurvePublicKey)
             and c.crypto_curve.name == key.curve.name),
            type(key).__name__,
        )  # fmt: skip
    return {
        "ca": ca,
        "issuance": {"default_profile": cfg.default_profile, "device_reenrolment": cfg.device_reenrolment},
        "profiles": {
            name: {k: (list(x) if isinstance(x := getattr(p, k), tuple) else x) for k in PROFILE_KEYS}
            for name, p in sorted(cfg.profiles.items())
        },
        "crl": {
            "validity_hours": cfg.crl.validity_hours,
            "delta_validity_hours": cfg.crl.delta_validity_hours,
            "full_interval_seconds": cfg.crl.full_interval_seconds,
            "max_publish_delay_seconds": cfg.crl.max_publish_delay_seconds,
        },
        "server": {
            "est_port": cfg.server.est_port,
            "crl_port": cfg.server.crl_port,
            "tls_groups": list(cfg.server.tls_groups),
            "tls_ciphersuites": list(cfg.server.tls_ciphersuites),
        },
        "csr": {"max_bytes": cfg.csr.max_bytes, "duplicate_csr": cfg.csr.duplicate_csr},
        "lint": {"enabled": cfg.lint_enabled},
        "clock": {"source": cfg.clock.source, "max_offset_seconds": cfg.clock.max_offset_seconds},
        "audit": {
            "seal_every_records": cfg.audit.seal_every_records,
            "seal_interval_seconds": cfg.audit.seal_interval_seconds,
        },
    }


@dataclass(frozen=True)
class PolicySource:
    """Everything a policy document is made from."""

    values: dict[str, Any]
    variables: dict[str, Any]  # the ckms_ca_* values used (role defaults + overrides)
    overrides: dict[str, Any]
    inventory: str | None  # repository-relative path, None: role defaults
    catalog: dict[str, Control]
    flows: list[dict[str, Any]]
    segments: list[dict[str, Any]]


def policy_source(inventory: Path | None = None) -> PolicySource:
    overrides = inventory_overrides(inventory) if inventory else {}
    raw, variables = deployed_toml(overrides)
    values = values_of(raw)
    values["ca"]["validity_days"] = int(variables["ckms_ca_validity_days"])
    values["ca"]["key_curve"] = values["ca"]["curve"]
    if not variables["ckms_ca_policy_oid"]:
        values["ca"]["policy_oid"] = GENERATED_OID
    flows: list[dict[str, Any]] = []
    segments: list[dict[str, Any]] = []
    if inventory:
        inv_vars = inventory_vars(inventory)
        flows = list(inv_vars.get("ckms_flows") or [])
        segments = list(inv_vars.get("ckms_segments") or [])
    if not flows:
        env = model.build_environment("policy", "onprem", with_rogue=False)
        flows = [
            {"name": f.name, "src": list(f.src), "dst": list(f.dst), "proto": f.proto, "port": f.port,
             "purpose": f.purpose}
            for f in env.flows
        ]  # fmt: skip
        segments = [{"name": s.name, "purpose": s.purpose} for s in env.segments]
    inv = None
    if inventory:
        inv = (
            str(inventory.resolve().relative_to(REPO))
            if inventory.resolve().is_relative_to(REPO)
            else str(inventory)
        )
    return PolicySource(values, variables, overrides, inv, load_catalog(), flows, segments)


# --------------------------------------------------------------------------------------------------
# the values block and drift


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def values_block(src: PolicySource) -> str:
    head = (
        f"{VALUES_MARK} (generated by hardening.security_policy from "
        f"{src.inventory or 'the ckms_ca role defaults'}; compared with the deployed ckms.toml)\n"
    )
    body = str(
        yaml.safe_dump(src.values, sort_keys=False, allow_unicode=True, default_flow_style=None, width=100)
    )
    return "```yaml\n" + head + body + "```"


def document_values(document: str) -> dict[str, Any]:
    """The policy values a document states (its ``# policy-values`` yaml block)."""
    m = re.search(r"^```yaml\n" + re.escape(VALUES_MARK) + r"[^\n]*\n(.*?)^```$", document, re.M | re.S)
    if not m:
        raise PolicyError("the document has no '# policy-values' yaml block")
    data = yaml.safe_load(m.group(1))
    if not isinstance(data, dict):
        raise PolicyError("the policy-values block is not a mapping")
    return data


def deployed_values(toml_text: str, ca_cert_pem: bytes | str | None = None) -> dict[str, Any]:
    """The policy values of a deployed ckms.toml (and CA certificate); PolicyError when unreadable."""
    try:
        raw = tomllib.loads(toml_text)
        cert = None
        if ca_cert_pem:
            pem = ca_cert_pem.encode() if isinstance(ca_cert_pem, str) else ca_cert_pem
            cert = x509.load_pem_x509_certificate(pem)
        return values_of(raw, cert)
    except (tomllib.TOMLDecodeError, ConfigError, ValueError) as exc:
        raise PolicyError(f"ckms.toml: cannot be read as the daemon reads it ({exc})") from None


def drift(toml_text: str, document: str, ca_cert_pem: bytes | str | None = None) -> list[str]:
    """Differences between the policy values ``document`` states and a deployed ckms.toml (and CA
    certificate, for the CA's validity and key); empty when they are in step. Each names the key."""
    stated = _flatten(document_values(document))
    try:
        actual = _flatten(deployed_values(toml_text, ca_cert_pem))
    except PolicyError as exc:
        return [str(exc)]
    out: list[str] = []
    for key in sorted(stated.keys() | actual.keys()):
        if key in ("ca.validity_days", "ca.key_curve") and not ca_cert_pem:
            continue  # only the CA certificate shows these
        if key not in stated:
            out.append(f"{key}: deployed {actual[key]!r}, not in the document")
        elif key not in actual:
            out.append(f"{key}: the document states {stated[key]!r}, not deployed")
        elif key == "ca.policy_oid" and stated[key] == GENERATED_OID:
            if not (isinstance(actual[key], str) and GENERATED_OID_RE.fullmatch(actual[key])):
                out.append(
                    f"ca.policy_oid: the document states one OID allocated at the ceremony (2.999.<n>.<n>.1) "
                    f"in every profile, deployed {actual[key]!r}"
                )
        elif stated[key] != actual[key]:
            out.append(f"{key}: the document states {stated[key]!r}, deployed {actual[key]!r}")
    return out


# --------------------------------------------------------------------------------------------------
# rendering


def _cell(text: object) -> str:
    if isinstance(text, bool):
        text = str(text).lower()
    elif isinstance(text, list | tuple):
        text = ", ".join(str(t) for t in text)
    return str(text).replace("|", "\\|").replace("\n", " ")


def _items(src: PolicySource) -> list[Control]:
    cited = "doc:docs/security-policy.md"
    return [
        c
        for c in src.catalog.values()
        if c.chapter == "A"
        and (cited in c.all_implemented_by() or c.procedure == "docs/operations.md#security-policy"
             or c.id in EXTRA_ITEMS)
    ]  # fmt: skip


def _acl_by_role() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {r: [] for r in ROLES}
    for role, op, res in sorted(DEFAULT_ACL):
        out[role].append(op if res == "*" else f"{op} ({res})")
    return out


JA_ROLE = {
    "authority": "責任者",
    "administrator": "管理担当",
    "operator": "利用担当",
    "auditor": "監査者",
}
JA_SEGMENT = {
    "mgmt": "管理ネットワーク（コントローラから各ホストへの SSH のみ）",
    "ca": "CA セグメント（HSM をもつ CA サーバ、データベース）",
    "lan": "工場 LAN（IoT 製品向け証明書管理端末、登録済みの管理 PC、ハブ）",
    "vpn": "緊急時の管理用 VPN（ルータ上の WireGuard）",
}
JA_FLOW = {
    "est": "IoT 製品向け証明書管理端末からの証明書の登録（相互 TLS の EST）",
    "admin-ssh": "登録済みの管理 PC または緊急時の VPN からの CA の管理",
    "ntp": "信頼できる時刻源による CA の時刻同期",
    "crl": "端末（ハブ）による HTTP での CRL の取得",
    "ca-db": "CA ノードから共有データベースへ（CA セグメント内）",
}
JA_SUMMARY = {
    "A.01": "この CA 独自のセキュリティポリシー（RFC 3647 の CP/CPS に倣う）。設定可能なオプション（プロファイル、"
    "アルゴリズム、有効期間、CRL の間隔）と下位ポリシーを列挙し、設計文書とともにリポジトリに置く。",
    "A.02": "証明書と CRL の署名鍵は HSM のトークン内でだけ生成・使用し、管理操作は管理者に、発行・失効は利用者に限る。"
    "デーモンがこれを強制し、チェックが証明する。",
    "A.03": "CKMS ポリシーの下位にあるポリシー（トイモデルでは HSM 自身のセキュリティポリシー）とその保管場所を示す。",
    "A.04": "CKMS ポリシーの根拠となる会社のポリシー（情報管理、情報セキュリティ、コンピュータ・ネットワークセキュリティ、"
    "IoT 製品の製造・運用）を示す。",
    "A.05": "発行するすべての証明書に、プロファイル設定の証明書ポリシー OID を certificatePolicies 拡張（RFC 5280）で入れ、"
    "検証時にその OID を確認する。",
    "A.07": "CA は匿名性・連結不可能性・観測不可能性のいずれも提供しない。",
    "A.57": "CA は日本国内の自社工場でのみ運用するため、適用される法令は日本法のみであり、そのことをポリシーに記載する。",
}


def render(src: PolicySource, lang: str) -> str:
    """docs/security-policy.md (``en``) or docs/security-policy.ja.md (``ja``)."""
    ja = lang == "ja"

    def t(en: str, jp: str) -> str:
        return jp if ja else en

    v = src.values
    ca, crl, server = v["ca"], v["crl"], v["server"]
    oid = ca["policy_oid"]
    inv = src.inventory or t("none: the ckms_ca role defaults", "なし（ckms_ca ロールの既定値）")
    out: list[str] = [
        t("# CKMS security policy (CP/CPS)", "# CKMS セキュリティポリシー（CP/CPS）"),
        "",
        t(
            "<!-- Generated by `python -m hardening.security_policy --write`; do not edit by hand: edit the "
            "catalog, the ckms_ca role defaults or hardening/security_policy.py. -->",
            "<!-- `python -m hardening.security_policy --write` が生成します。手で編集せず、カタログ、ckms_ca "
            "ロールの既定値または hardening/security_policy.py を編集してください。 -->",
        ),
        "",
        t(
            "The security policy of the ckms private CA, which issues the certificates of the company's IoT "
            "products. It follows the chapters of an RFC 3647 certificate policy and certification practice "
            "statement in short, and states every configurable option with the value in force. The values "
            "come from the CA configuration the `ckms_ca` role deploys, so a deployed CA can be compared with "
            "this document (section 8). 日本語版: [security-policy.ja.md](security-policy.ja.md).",
            "IoT 製品の証明書を発行する ckms プライベート CA のセキュリティポリシーです。RFC 3647 の証明書ポリシー"
            "（CP）と認証実施規程（CPS）の章立てを簡略化して使い、設定可能なオプションをすべて、有効な値とともに記載"
            "します。値は `ckms_ca` ロールが配備する CA の設定から取るため、配備済みの CA をこの文書と比較できます"
            "（第 8 章）。English: [security-policy.md](security-policy.md)。用語は [用語集](glossary.md) に従います。",
        ),
        "",
        t(f"Generated from inventory: {inv}.", f"生成元のインベントリ: {inv}。"),
        "",
        t("## 1. Introduction", "## 1. はじめに"),
        "",
        t("### 1.1 Overview and scope", "### 1.1 概要と適用範囲"),
        "",
        t(
            "The policy covers the CA server (`ckms-ca.service`) with its cryptographic module (HSM, reached "
            "through PKCS#11), the filtering router, and the network segments below; the certificate-management "
            "terminal is the only client that requests certificates. Nothing outside the allowed flows "
            "(section 4.1) reaches the CA.",
            "本ポリシーの適用範囲は、暗号モジュール（HSM、PKCS#11 経由）をもつ CA サーバ（`ckms-ca.service`）、"
            "フィルタリングルータ、下記のネットワークセグメントです。証明書を要求するクライアントは IoT 製品向け"
            "証明書管理端末だけです。許可したフロー（4.1 節）以外は CA に届きません。",
        ),
        "",
        t("| segment | purpose |", "| セグメント | 用途 |"),
        "| --- | --- |",
        *[
            f"| `{s['name']}` | {_cell(JA_SEGMENT.get(s['name'], s.get('purpose', '')) if ja and not src.inventory else s.get('purpose', ''))} |"
            for s in src.segments
        ],
        "",
        t("### 1.2 Document name and identification", "### 1.2 文書の名称と識別"),
        "",
    ]
    if oid == GENERATED_OID:
        out.append(
            t(
                "Certificate policy OID: allocated at the CA ceremony under the X.660 example arc "
                "(`2.999.<n>.<n>.1`, random arcs), because the role sets no `ckms_ca_policy_oid`; the same OID is "
                "in every profile and every issued certificate (A.05). A production CA sets `ckms_ca_policy_oid` "
                "to an OID under the company's IANA Private Enterprise Number and generates its policy with "
                "`--inventory`.",
                "証明書ポリシー OID: ロールに `ckms_ca_policy_oid` がないため、CA の鍵生成の儀式で X.660 の example "
                "アーク（`2.999.<n>.<n>.1`、ランダムなアーク）の下に割り当てます。同じ OID がすべてのプロファイルと"
                "発行するすべての証明書に入ります（A.05）。本番の CA は `ckms_ca_policy_oid` に自社の IANA "
                "プライベートエンタープライズ番号の下の OID を設定し、`--inventory` でポリシーを生成します。",
            )
        )
    else:
        out.append(
            t(
                f"Certificate policy OID: `{oid}`, in every profile and every issued certificate (A.05).",
                f"証明書ポリシー OID: `{oid}`。すべてのプロファイルと発行するすべての証明書に入ります（A.05）。",
            )
        )
    out += [
        "",
        t("### 1.3 Participants and roles", "### 1.3 関係者と役割"),
        "",
        t(
            "Four roles, all mutually separated (A.27, A.29); every person is an entity of their own. The "
            "operations each role may perform are the daemon's default ACL (`ckms_app/authority/rbac.py`); "
            "people and duties: [roles-and-audit.md](roles-and-audit.md).",
            "役割は四つで、すべて互いに分離します（A.27、A.29）。各個人が一つのエンティティです。各役割に許す操作は"
            "デーモンの既定の ACL（`ckms_app/authority/rbac.py`）です。人と職務は "
            "[roles-and-audit.ja.md](roles-and-audit.ja.md) を参照してください。",
        ),
        "",
        t("| role | may perform |", "| 役割 | 許される操作 |"),
        "| --- | --- |",
        *[
            f"| {t(r, f'{JA_ROLE[r]}（`{r}`）')} | {_cell([f'`{o}`' for o in ops])} |"
            for r, ops in _acl_by_role().items()
        ],
        "",
        t("### 1.4 Guidance items this policy answers", "### 1.4 本ポリシーが対応するガイダンス項目"),
        "",
        t(
            "| item | title | what this CA does | implemented by | checks |",
            "| 項目 | 表題 | この CA の対応 | 実装 | チェック |",
        ),
        "| --- | --- | --- | --- | --- |",
    ]
    for c in _items(src):
        impl = [f"`{r}`" for r in c.implemented_by] + ([f"`{c.procedure}`"] if c.procedure else [])
        summary = JA_SUMMARY.get(c.id, c.summary_en) if ja else c.summary_en
        out.append(
            f"| {c.id} | {_cell(c.title_ja if ja else c.title_en)} | {_cell(summary)} | {_cell(impl) or '-'} "
            f"| {_cell([f'`{x}`' for x in c.all_checks()]) or '-'} |"
        )
    out += [
        "",
        t("## 2. Policy framework", "## 2. ポリシーの体系"),
        "",
        t("### 2.1 Superior policies (A.04)", "### 2.1 上位ポリシー（A.04）"),
        "",
        t(
            "This policy derives from the company's policies below. Each is recorded with its owner and "
            "current version in the CKMS record book ([operations.md](operations.md#security-policy)); a "
            "change to any of them triggers a review of this policy.",
            "本ポリシーは下記の会社のポリシーに基づきます。それぞれの所有者と現行版を CKMS 記録簿に記録します"
            "（[operations.ja.md](operations.ja.md#security-policy)）。いずれかが変われば本ポリシーを見直します。",
        ),
        "",
        t("1. Information management policy", "1. 情報管理ポリシー"),
        t("2. Information security policy", "2. 情報セキュリティポリシー"),
        t("3. Computer and network security policy", "3. コンピュータ・ネットワークセキュリティポリシー"),
        t("4. IoT product manufacturing and operations policy", "4. IoT 製品の製造・運用ポリシー"),
        "",
        t("### 2.2 Subordinate policies (A.03)", "### 2.2 下位ポリシー（A.03）"),
        "",
        t(
            "- The HSM's own security policy: the vendor's FIPS 140 security policy of the module in use, with "
            "title, version and CMVP certificate recorded at procurement "
            "([operations.md](operations.md#hsm-procurement)). The lab's SoftHSM2 token is a software token "
            "with no such policy and stands in for the HSM only in the lab.",
            "- HSM 自身のセキュリティポリシー: 使用するモジュールのベンダーによる FIPS 140 セキュリティポリシー。"
            "表題、版、CMVP 認証を調達時に記録します（[operations.ja.md](operations.ja.md#hsm-procurement)）。"
            "ラボの SoftHSM2 トークンはソフトウェアトークンでこの種のポリシーをもたず、ラボでだけ HSM の代わりを"
            "します。",
        ),
        t(
            "- The HSM custody rules: 2-of-3 multi-party control of the token's administrator credential "
            "([hsm-custody.md](hsm-custody.md)).",
            "- HSM のカストディ規則: トークンの管理者資格情報の 2 out of 3 マルチパーティコントロール"
            "（[hsm-custody.ja.md](hsm-custody.ja.md)）。",
        ),
        t(
            "- The access-control rules of the CA (the ACL of section 1.3, changed only as two-person changes) "
            "and the audit rules ([roles-and-audit.md](roles-and-audit.md)).",
            "- CA のアクセス制御規則（1.3 節の ACL。変更は二人による変更としてのみ行う）と監査の規則"
            "（[roles-and-audit.ja.md](roles-and-audit.ja.md)）。",
        ),
        t(
            "- The network flow policy: the flow model of section 4.1, from which the router, the CA host "
            "firewall and the IDS are rendered.",
            "- ネットワークのフローポリシー: 4.1 節のフローモデル。ルータ、CA ホストのファイアウォール、IDS の"
            "設定はここから生成します。",
        ),
        "",
        t("### 2.3 Law and place of operation (A.57)", "### 2.3 適用法と運用場所（A.57）"),
        "",
        t(
            "The CA is operated only in the company's factories in Japan and serves only the company, so only "
            "Japanese law applies. Operating it elsewhere or for another organisation requires a review of this "
            "policy first. The CA offers no anonymity, unlinkability or unobservability (A.07): every request is "
            "tied to an identified operator.",
            "CA は日本国内の自社工場でのみ運用し、自社にのみ提供するため、適用される法令は日本法のみです。国外や"
            "他組織のために運用する場合は、先に本ポリシーを見直します。CA は匿名性・連結不可能性・観測不可能性を"
            "提供しません（A.07）。すべての要求は識別された利用者に結び付きます。",
        ),
        "",
        t("### 2.4 Approval and review (A.01)", "### 2.4 承認と見直し（A.01）"),
        "",
        t(
            "Administrators keep this document current (it is generated, section 8); the authority approves each "
            "version; the auditor reviews it every year and whenever a superior policy, a profile, an algorithm, "
            "the CRL interval or the legal situation changes ([operations.md](operations.md#security-policy)).",
            "管理者が本文書を最新に保ち（生成します。第 8 章）、責任者が各版を承認し、監査者が毎年、および上位"
            "ポリシー、プロファイル、アルゴリズム、CRL の間隔、法的状況が変わるたびに見直します"
            "（[operations.ja.md](operations.ja.md#security-policy)）。",
        ),
        "",
        t("## 3. Certificate life cycle", "## 3. 証明書のライフサイクル"),
        "",
        t("### 3.1 Profiles and issuance", "### 3.1 プロファイルと発行"),
        "",
        t(
            f"Requests arrive over EST (mutual TLS, port {server['est_port']}) from the certificate-management "
            f"terminal or through `ckms issue`; the CSR may not choose the policy OID or extensions, the profile "
            f"decides them, and every certificate passes the pre-issuance linter (`ckms-lint`) before it is "
            f"signed in the HSM. Default profile: `{v['issuance']['default_profile']}`; a device renewing itself "
            f"with its own certificate (RFC 7030 re-enrolment): "
            f"{'allowed' if v['issuance']['device_reenrolment'] else 'not allowed'}.",
            f"要求は IoT 製品向け証明書管理端末からの EST（相互 TLS、ポート {server['est_port']}）または "
            f"`ckms issue` で届きます。CSR は証明書ポリシー OID や拡張を選べず、プロファイルが決めます。すべての証明書は"
            f"署名前に発行前の適合確認（`ckms-lint`）を通り、HSM で署名されます。既定のプロファイル: "
            f"`{v['issuance']['default_profile']}`。デバイス自身の証明書による更新（RFC 7030 の再登録）: "
            f"{'許可' if v['issuance']['device_reenrolment'] else '不許可'}。",
        ),
        "",
        t(
            "| profile | validity (days) | key usage | extended key usage | key curves | SAN required |",
            "| プロファイル | 有効日数 | 鍵用途 | 拡張鍵用途 | 鍵の曲線 | SAN 必須 |",
        ),
        "| --- | ---: | --- | --- | --- | --- |",
        *[
            f"| `{name}` | {p['validity_days']} | {_cell(p['key_usage'])} | {_cell(p['extended_key_usage'])} "
            f"| {_cell(p['allowed_curves'])} | {t('yes', 'はい') if p['san_required'] else t('no', 'いいえ')} |"
            for name, p in v["profiles"].items()
        ],
        "",
        t("### 3.2 Revocation and CRL", "### 3.2 失効と CRL"),
        "",
        t(
            f"Operators revoke device certificates (`ckms revoke`). A full CRL is valid for {crl['validity_hours']} h "
            f"and a fresh one is published at least every {crl['full_interval_seconds']} s; a delta CRL is valid "
            f"for {crl['delta_validity_hours']} h. A revocation is in a published CRL within "
            f"{crl['max_publish_delay_seconds']} s (the guidance's toy model allows 1 hour, A.37). CRLs are "
            f"served over HTTP on port {server['crl_port']} to the terminal.",
            f"利用者がデバイス証明書を失効させます（`ckms revoke`）。完全 CRL の有効期間は {crl['validity_hours']} 時間で、"
            f"少なくとも {crl['full_interval_seconds']} 秒ごとに新しいものを公開します。差分 CRL の有効期間は "
            f"{crl['delta_validity_hours']} 時間です。失効は {crl['max_publish_delay_seconds']} 秒以内に公開済みの CRL に"
            f"入ります（ガイダンスのトイモデルの許容は 1 時間、A.37）。CRL はポート {server['crl_port']} の HTTP で端末に"
            f"提供します。",
        ),
        "",
        t("## 4. Facility, management and operational controls", "## 4. 施設・管理・運用のコントロール"),
        "",
        t("### 4.1 Allowed flows", "### 4.1 許可するフロー"),
        "",
        t(
            "The only flows allowed between segments (the flow model, `ckms_lab/model.py` or the inventory's "
            "`ckms_flows`); the router drops everything else and the CA host firewall admits only these to EST "
            "and CRL.",
            "セグメント間で許可するフローはこれだけです（フローモデル: `ckms_lab/model.py` またはインベントリの "
            "`ckms_flows`）。ルータはそれ以外をすべて破棄し、CA ホストのファイアウォールは EST と CRL にこれだけを"
            "通します。",
        ),
        "",
        t(
            "| flow | from | to | protocol/port | purpose |",
            "| フロー | 送信元 | 宛先 | プロトコル/ポート | 用途 |",
        ),
        "| --- | --- | --- | --- | --- |",
        *[
            f"| `{f['name']}` | {_cell(f['src'])} | {_cell(f['dst'])} | {f['proto']}/{f['port']} "
            f"| {_cell(JA_FLOW.get(f['name'], f.get('purpose', '')) if ja and not src.inventory else f.get('purpose', ''))} |"
            for f in src.flows
        ],
        "",
        t("### 4.2 Time", "### 4.2 時刻"),
        "",
        t(
            f"Clock gate: `{v['clock']['source']}`; the CA signs only while the clock is synchronised to the "
            f"trusted time source with an offset of at most {v['clock']['max_offset_seconds']:g} s (A.33).",
            f"クロックゲート: `{v['clock']['source']}`。CA は、時刻源に同期し誤差が {v['clock']['max_offset_seconds']:g} "
            f"秒以内の間だけ署名します（A.33）。",
        ),
        "",
        t("### 4.3 Audit", "### 4.3 監査"),
        "",
        t(
            f"Every CA and HSM action is written with the individual's entity ID to the hash-chained audit "
            f"trail, sealed with the HSM audit key every {v['audit']['seal_every_records']} records and at least "
            f"every {v['audit']['seal_interval_seconds']:g} s (A.06).",
            f"CA と HSM のすべての操作を、個人のエンティティ ID とともにハッシュチェーンの操作ログに記録し、"
            f"{v['audit']['seal_every_records']} 件ごと、かつ少なくとも {v['audit']['seal_interval_seconds']:g} 秒ごとに HSM の"
            f"監査鍵で封印します（A.06）。",
        ),
        "",
        t("## 5. Technical security controls", "## 5. 技術的セキュリティコントロール"),
        "",
        t("### 5.1 CA key generation and protection", "### 5.1 CA 署名鍵の生成と保護"),
        "",
        t(
            f"The CA signing key ({ca['curve']}) is generated inside the HSM token at the ceremony "
            "(`ckms ca init`), sensitive and not extractable; it leaves the token only wrapped, under 2-of-3 "
            f"custody. The CA certificate is valid for {ca['validity_days']} days.",
            f"CA 署名鍵（{ca['curve']}）は儀式（`ckms ca init`）で HSM のトークン内で生成し、sensitive かつ取り出し"
            "不可とします。トークンから出るのはラップした形だけで、2 out of 3 のカストディの下に置きます。CA 証明書の"
            f"有効期間は {ca['validity_days']} 日です。",
        ),
        "",
        t("### 5.2 Algorithms", "### 5.2 アルゴリズム"),
        "",
        t(
            f"Signatures: ECDSA with P-256/SHA-256 or P-384/SHA-384 only (A.54, A.62); the CA key uses "
            f"{ca['curve']}. The daemon's TLS is version 1.3 only, with key-exchange groups "
            f"{_cell(server['tls_groups'])} and AEAD suites {_cell(server['tls_ciphersuites'])} only (A.64).",
            f"署名: ECDSA の P-256/SHA-256 または P-384/SHA-384 のみ（A.54、A.62）。CA 署名鍵は {ca['curve']} です。"
            f"デーモンの TLS は 1.3 のみで、鍵交換グループは {_cell(server['tls_groups'])}、AEAD スイートは "
            f"{_cell(server['tls_ciphersuites'])} のみです（A.64）。",
        ),
        "",
        t("## 6. Compliance audit", "## 6. 準拠性監査"),
        "",
        t(
            "The hardening checks run against the deployed hosts and `make report` shows, per guidance item, "
            "what was observed; `check:A.01.policy_document_matches_deployment` compares this document with the "
            "deployed CA. The enforcement of the rules above is proved by:",
            "堅牢化チェックを配備済みのホストに対して実行し、`make report` がガイダンス項目ごとに観測結果を示します。"
            "`check:A.01.policy_document_matches_deployment` は本文書と配備済みの CA を比較します。上記の規則の"
            "強制は次のチェックで証明します。",
        ),
        "",
        *[f"- {c.id}: {_cell([f'`{x}`' for x in c.all_checks()])}" for c in _items(src) if c.all_checks()],
        "",
        t("## 7. Configurable options and their values", "## 7. 設定可能なオプションとその値"),
        "",
        t(
            "Each option, where it is set, and the value in force. The inventory variable overrides the role "
            "default; the ckms.toml key is what the daemon reads.",
            "各オプションの設定箇所と有効な値です。インベントリ変数がロールの既定値に優先し、デーモンは ckms.toml "
            "のキーを読みます。",
        ),
        "",
        t(
            "| option | ckms.toml | inventory variable | value |",
            "| オプション | ckms.toml | インベントリ変数 | 値 |",
        ),
        "| --- | --- | --- | --- |",
    ]
    rows = [
        (t("CA name", "CA 名"), "[ca] name", "ckms_ca_name", ca["name"]),
        (t("CA curve", "CA の曲線"), "[ca] curve", "ckms_ca_curve", ca["curve"]),
        (t("CA validity (days)", "CA 証明書の有効日数"), t("(the CA certificate)", "（CA 証明書）"),
         "ckms_ca_validity_days", ca["validity_days"]),
        (t("certificate policy OID", "証明書ポリシー OID"), "[profiles.NAME] policy_oid", "ckms_ca_policy_oid",
         t("allocated at the ceremony (2.999.<n>.<n>.1)", "儀式で割り当て（2.999.<n>.<n>.1）") if oid == GENERATED_OID else oid),
        (t("profiles", "プロファイル"), "[profiles.NAME]", "-", list(v["profiles"])),
        (t("CRL validity (h)", "完全 CRL の有効期間（時間）"), "[crl] validity_hours", "-", crl["validity_hours"]),
        (t("delta CRL validity (h)", "差分 CRL の有効期間（時間）"), "[crl] delta_validity_hours", "-",
         crl["delta_validity_hours"]),
        (t("full CRL interval (s)", "完全 CRL の間隔（秒）"), "[crl] full_interval_seconds", "-",
         crl["full_interval_seconds"]),
        (t("revocation to CRL (s)", "失効から CRL まで（秒）"), "[crl] max_publish_delay_seconds", "-",
         crl["max_publish_delay_seconds"]),
        (t("TLS groups", "TLS 鍵交換グループ"), "[server] tls_groups", "ckms_ca_tls_groups", server["tls_groups"]),
        (t("TLS suites", "TLS スイート"), "[server] tls_ciphersuites", "ckms_ca_tls_ciphersuites",
         server["tls_ciphersuites"]),
        (t("EST / CRL ports", "EST / CRL ポート"), "[server] est_port, crl_port", "ckms_ca_est_port, ckms_ca_crl_port",
         f"{server['est_port']}, {server['crl_port']}"),
        (t("device re-enrolment", "デバイスの再登録"), "[issuance] device_reenrolment", "ckms_ca_device_reenrolment",
         v["issuance"]["device_reenrolment"]),
        (t("pre-issuance linter", "発行前の適合確認"), "[lint] enabled", "-", v["lint"]["enabled"]),
        (t("clock gate", "クロックゲート"), "[clock] source", "ckms_ca_clock_source", v["clock"]["source"]),
        (t("CSR size limit (bytes)", "CSR の上限（バイト）"), "[csr] max_bytes", "-", v["csr"]["max_bytes"]),
    ]  # fmt: skip
    out += [
        f"| {a} | {f'`{b}`' if b.startswith('[') else b} | {f'`{c}`' if c != '-' else c} | {_cell(d)} |"
        for a, b, c, d in rows
    ]
    if src.inventory:
        scope_en = (
            f"This version describes what the `ckms_ca` role deploys with the inventory `{src.inventory}`."
        )
        scope_ja = f"この版は `ckms_ca` ロールがインベントリ `{src.inventory}` で配備するものを記述します。"
    else:
        scope_en = (
            "This version describes what the `ckms_ca` role deploys with its defaults (the lab's inventory "
            "overrides no policy value)."
        )
        scope_ja = "この版は `ckms_ca` ロールが既定値で配備するものを記述します（ラボのインベントリはポリシーの値を上書きしません）。"
    out += [
        "",
        t(
            "The machine-readable values (the drift check reads this block):",
            "機械可読の値（ドリフトの確認はこのブロックを読みます）:",
        ),
        "",
        values_block(src),
        "",
        t("## 8. How this document is kept in step", "## 8. 本文書を実態と一致させる方法"),
        "",
        t(
            "The document is generated; CI fails when the committed version differs from a fresh generation "
            "(`--check`, `tests/unit/test_security_policy.py`), and the hardening check compares the values "
            f"block with the ckms.toml and CA certificate on the CA host. {scope_en} A site "
            "whose inventory sets a policy variable (`ckms_ca_curve`, `ckms_ca_policy_oid`, …, e.g. "
            "`inventories/production.example`) generates its own policy from that inventory:",
            "本文書は生成物です。コミット済みの版が新たな生成結果と異なれば CI が失敗し（`--check`、"
            "`tests/unit/test_security_policy.py`）、堅牢化チェックが値のブロックを CA ホストの ckms.toml および "
            f"CA 証明書と比較します。{scope_ja}ポリシー変数（`ckms_ca_curve`、`ckms_ca_policy_oid` など）を設定する"
            "サイト（例: `inventories/production.example`）は、そのインベントリから自サイトのポリシーを生成します:",
        ),
        "",
        "```sh",
        "python -m hardening.security_policy --write",
        "python -m hardening.security_policy --check",
        "python -m hardening.security_policy --inventory inventories/production.example --output-dir build/policy",
        "python -m hardening.security_policy --drift /var/lib/ckms/ckms.toml --ca-cert /var/lib/ckms/ca/ca.pem",
        "```",
        "",
    ]
    return "\n".join(out)


def generate(inventory: Path | None = None) -> dict[str, str]:
    """{"en": text, "ja": text} of the policy for the role defaults or ``inventory``."""
    src = policy_source(inventory)
    return {"en": render(src, "en"), "ja": render(src, "ja")}


def stale(docs: Mapping[str, Path] | None = None) -> list[str]:
    """The committed documents that differ from a fresh generation (empty: current)."""
    docs = docs or {"en": DOC_EN, "ja": DOC_JA}
    fresh = generate()
    out: list[str] = []
    for lang, path in docs.items():
        name = path.relative_to(REPO) if path.resolve().is_relative_to(REPO) else path
        if not path.is_file():
            out.append(f"{name}: missing")
        elif path.read_text("utf-8") != fresh[lang]:
            out.append(f"{name}: differs from a fresh generation")
    return out


def inventory_policy_overrides(variables: Mapping[str, Any]) -> dict[str, Any]:
    """The policy variables among a host's inventory variables (for the check's evidence)."""
    return {k: variables[k] for k in POLICY_VARS if k in variables}


CHECK_ID = "check:A.01.policy_document_matches_deployment"


def report_section(records: Iterable[Mapping[str, Any]] = ()) -> dict[str, Any]:
    """For hardening.report: the policy documents, the values they state, whether they are current, and
    per CA host the drift the check recorded (``records``: the check result records, any check)."""
    stale_docs = stale()
    hosts = []
    for r in records:
        if r.get("check") != CHECK_ID:
            continue
        ev = {e["label"]: e["value"] for e in r.get("evidence", [])}
        found = ev.get("drift", "")
        try:
            diffs = yaml.safe_load(found) if found.startswith("[") else []  # evidence stores lists as JSON
        except yaml.YAMLError:
            diffs = [found]
        hosts.append({"host": r.get("host"), "outcome": r.get("outcome"), "drift": diffs})
    return {
        "document": str(DOC_EN.relative_to(REPO)),
        "document_ja": str(DOC_JA.relative_to(REPO)),
        "values": document_values(DOC_EN.read_text("utf-8")) if DOC_EN.is_file() else {},
        "current": not stale_docs,
        "stale": stale_docs,
        "check": CHECK_ID,
        "hosts": hosts,
    }


def report_markdown(section: Mapping[str, Any], lang: str = "en") -> list[str]:
    """Markdown lines of :func:`report_section` (a heading, the state of the documents, the drift)."""
    ja = lang == "ja"
    doc = section["document_ja"] if ja else section["document"]
    lines = ["## " + ("セキュリティポリシー（A.01）" if ja else "Security policy (A.01)"), ""]
    if section["current"]:
        lines.append(f"`{doc}`: " + ("生成結果と一致" if ja else "current (matches a fresh generation)"))
    else:
        lines.append(f"`{doc}`: " + ("古い: " if ja else "stale: ") + "; ".join(section["stale"]))
    lines.append("")
    if not section["hosts"]:
        lines.append("配備との比較結果なし" if ja else f"no result of `{section['check']}`")
    for h in section["hosts"]:
        what = "; ".join(h["drift"]) or ("差異なし" if ja else "no drift")
        lines.append(f"- {h['host']}: {h['outcome']}: {what}")
    flat = _flatten(section["values"])
    if flat:
        lines += ["", "| " + ("値" if ja else "value") + " | |", "| --- | --- |"]
        lines += [f"| `{k}` | {_cell(v)} |" for k, v in flat.items()]
    return lines


def _report(lines: Iterable[str]) -> None:
    for line in lines:
        print(line, file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m hardening.security_policy", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--write", action="store_true", help="write the documents")
    parser.add_argument("--check", action="store_true", help="fail when the committed documents are stale")
    parser.add_argument("--inventory", type=Path, help="apply this inventory's policy variables")
    parser.add_argument("--output-dir", type=Path, help="where --write puts the documents (default docs/)")
    parser.add_argument(
        "--drift", type=Path, metavar="CKMS_TOML", help="compare the document with this ckms.toml"
    )
    parser.add_argument("--ca-cert", type=Path, help="with --drift: the deployed CA certificate")
    parser.add_argument("--document", type=Path, default=DOC_EN, help="with --drift: the policy document")
    args = parser.parse_args(argv)
    try:
        if args.check:
            problems = stale()
            _report(problems)
            if problems:
                print("run: python -m hardening.security_policy --write", file=sys.stderr)
                return 1
            print("docs/security-policy.md and docs/security-policy.ja.md are current")
        if args.drift:
            cert = args.ca_cert.read_bytes() if args.ca_cert else None
            diffs = drift(args.drift.read_text("utf-8"), args.document.read_text("utf-8"), cert)
            _report(diffs)
            if diffs:
                return 1
            print(f"{args.drift} is in step with {args.document}")
        if args.write or not (args.check or args.drift):
            docs = generate(args.inventory)
            if not args.write:
                sys.stdout.write(docs["en"])
                return 0
            if args.inventory and not args.output_dir:
                raise PolicyError(
                    "--inventory writes a site's own policy: give --output-dir (docs/ holds the role defaults')"
                )
            outdir = args.output_dir or DOC_EN.parent
            outdir.mkdir(parents=True, exist_ok=True)
            for lang, name in (("en", DOC_EN.name), ("ja", DOC_JA.name)):
                (outdir / name).write_text(docs[lang], encoding="utf-8")
                print(f"wrote {outdir / name}")
    except PolicyError as exc:
        print(f"security policy: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
