//! `[auth]` and the tenants' `jwt_secret`: raw TOML → `auth::AuthConfig`.
//! Key files are read here, once, at load; an unreadable or unusable file is
//! an error naming it.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;
use toml::Spanned;

use super::validate::{interpolate, parse_table, SpanError};
use super::TenantConfig;
use crate::auth::{
    AccessRule, AuthConfig, FilterTemplate, Secret, TableMatch, VerifyingKey, DEFAULT_LEEWAY_SECS,
    DEFAULT_ROLE_CLAIM, DEFAULT_TENANT_CLAIM, MAX_LEEWAY_SECS,
};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAuth {
    #[serde(default)]
    pub secret: Option<Spanned<String>>,
    #[serde(default)]
    pub public_key_file: Option<Spanned<String>>,
    #[serde(default)]
    pub jwks_file: Option<Spanned<String>>,
    #[serde(default)]
    pub tenant_claim: Option<Spanned<String>>,
    #[serde(default)]
    pub role_claim: Option<Spanned<String>>,
    #[serde(default)]
    pub leeway_secs: Option<Spanned<u64>>,
    #[serde(default)]
    pub audience: Option<Spanned<String>>,
    #[serde(default)]
    pub issuer: Option<Spanned<String>>,
    #[serde(default)]
    pub allow_anonymous: bool,
    #[serde(default)]
    pub rules: Vec<RawRule>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRule {
    pub role: Spanned<String>,
    pub table: Spanned<String>,
    #[serde(default)]
    pub filter: Vec<Spanned<String>>,
}

/// `tenant_secrets`: the tenants' `jwt_secret`s, already checked.
pub(super) fn auth_config(
    config_path: &Path,
    raw: Option<&Spanned<RawAuth>>,
    tenant_secrets: BTreeMap<String, Secret>,
    tenants: &[TenantConfig],
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<AuthConfig, SpanError> {
    let mut config = AuthConfig {
        tenant_secrets,
        ..AuthConfig::default()
    };
    let Some(spanned) = raw else {
        return Ok(config);
    };
    let raw = spanned.get_ref();
    if let Some(secret) = &raw.secret {
        config.secret = Some(secret_from(secret, env)?);
    }
    if let Some(file) = &raw.public_key_file {
        let (path, bytes) = read_key_file(config_path, file, "public_key_file")?;
        let key = VerifyingKey::from_pem(&bytes, &path).map_err(|problem| {
            (
                file.span(),
                format!("public_key_file {}: {problem}", path.display()),
            )
        })?;
        config.public_keys.push(key);
    }
    if let Some(file) = &raw.jwks_file {
        let (path, bytes) = read_key_file(config_path, file, "jwks_file")?;
        let keys = VerifyingKey::from_jwks(&bytes, &path).map_err(|problem| {
            (
                file.span(),
                format!("jwks_file {}: {problem}", path.display()),
            )
        })?;
        config.public_keys.extend(keys);
    }
    for (value, target, what) in [
        (&raw.tenant_claim, &mut config.tenant_claim, "tenant_claim"),
        (&raw.role_claim, &mut config.role_claim, "role_claim"),
    ] {
        if let Some(v) = value {
            if v.get_ref().is_empty() {
                let default = if what == "tenant_claim" {
                    DEFAULT_TENANT_CLAIM
                } else {
                    DEFAULT_ROLE_CLAIM
                };
                return Err((
                    v.span(),
                    format!("{what} is empty; name a claim of the token (or leave it out for {default:?})"),
                ));
            }
            *target = v.get_ref().clone();
        }
    }
    config.leeway_secs = match &raw.leeway_secs {
        Some(v) if *v.get_ref() > MAX_LEEWAY_SECS => {
            return Err((
                v.span(),
                format!("leeway_secs must be at most {MAX_LEEWAY_SECS}; fix the clocks (NTP) rather than widen it (default {DEFAULT_LEEWAY_SECS})"),
            ))
        }
        Some(v) => *v.get_ref(),
        None => DEFAULT_LEEWAY_SECS,
    };
    for (value, target, what) in [
        (&raw.audience, &mut config.audience, "audience"),
        (&raw.issuer, &mut config.issuer, "issuer"),
    ] {
        if let Some(v) = value {
            if v.get_ref().is_empty() {
                return Err((
                    v.span(),
                    format!("{what} is empty; write the value tokens must carry, or leave it out to not check it"),
                ));
            }
            *target = Some(v.get_ref().clone());
        }
    }
    config.allow_anonymous = raw.allow_anonymous;
    if config.secret.is_none()
        && config.public_keys.is_empty()
        && config.tenant_secrets.is_empty()
        && !config.allow_anonymous
    {
        return Err((
            spanned.span(),
            "[auth] has no key, so no token could ever verify: set secret (HS256), public_key_file or jwks_file (RS256/ES256), or a tenant's jwt_secret, or allow_anonymous = true".into(),
        ));
    }
    for rule in &raw.rules {
        let parsed = access_rule(rule)?;
        if let TableMatch::Table(table) = &parsed.table {
            if !tenants.iter().any(|t| t.tables.contains(table)) {
                return Err((
                    rule.table.span(),
                    format!("rule table {table} is not in any tenant's tables; add it to a tenant's tables, fix the name, or write \"*\" for every table"),
                ));
            }
        }
        if config
            .rules
            .iter()
            .any(|r| r.role == parsed.role && r.table == parsed.table)
        {
            return Err((
                rule.table.span(),
                format!(
                    "role {:?} has two rules for table {}; merge them into one (its filters are AND-ed)",
                    parsed.role, parsed.table
                ),
            ));
        }
        config.rules.push(parsed);
    }
    Ok(config)
}

/// A tenant's `jwt_secret`, or `[auth] secret`.
pub(super) fn secret_from(
    raw: &Spanned<String>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Secret, SpanError> {
    let text = interpolate(raw.get_ref(), env).map_err(|m| (raw.span(), m))?;
    Secret::new(text.as_bytes()).map_err(|m| (raw.span(), m))
}

/// Reads a key file; a relative path is relative to the config file's directory.
fn read_key_file(
    config_path: &Path,
    value: &Spanned<String>,
    what: &str,
) -> Result<(std::path::PathBuf, Vec<u8>), SpanError> {
    if value.get_ref().is_empty() {
        return Err((
            value.span(),
            format!("{what} is empty; write the path of the key file"),
        ));
    }
    let path = config_path
        .parent()
        .unwrap_or(Path::new(""))
        .join(value.get_ref());
    let bytes = std::fs::read(&path).map_err(|err| {
        (
            value.span(),
            format!(
                "could not read {what} {}: {err}; check the path (relative paths start at the config file's directory) and that the walcast user may read it",
                path.display()
            ),
        )
    })?;
    Ok((path, bytes))
}

fn access_rule(raw: &RawRule) -> Result<AccessRule, SpanError> {
    let role = raw.role.get_ref();
    if role.is_empty() {
        return Err((
            raw.role.span(),
            "role is empty; write the role claim value this rule is for, like \"member\" (or \"anon\" for requests without a token)".into(),
        ));
    }
    let table = match raw.table.get_ref().as_str() {
        "*" => TableMatch::Any,
        text => TableMatch::Table(
            parse_table(text)
                .map_err(|m| (raw.table.span(), format!("{m}, or \"*\" for every table")))?,
        ),
    };
    let filters = raw
        .filter
        .iter()
        .map(|f| FilterTemplate::parse(f.get_ref()).map_err(|m| (f.span(), m)))
        .collect::<Result<_, _>>()?;
    Ok(AccessRule {
        role: role.clone(),
        table,
        filters,
    })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::auth::{Authenticator, KeyAlg, TableMatch};
    use crate::config::{parse, Config};
    use crate::model::TableName;

    const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/auth");
    const SECRET: &str = "from-the-env-0123456789-0123456789";
    const TENANTS: &str = "[[tenants]]\nid = \"acme\"\nurl = \"postgres://u@h/d\"\ntables = [\"tasks\", \"environments\"]\n";

    fn env(name: &str) -> Option<String> {
        match name {
            "JWT_SECRET" => Some(SECRET.into()),
            "SHORT" => Some("tiny".into()),
            _ => None,
        }
    }

    /// Loads `text` as if it were the file `walcast.toml` in the fixtures directory.
    fn load(text: &str) -> Result<Config, String> {
        let path = Path::new(FIXTURES).join("walcast.toml");
        parse(&path, text, &env).map_err(|e| {
            let text = e.to_string();
            assert!(!text.contains(SECRET), "{text}");
            text.replace(&format!("{FIXTURES}/"), "")
        })
    }

    #[test]
    fn full_auth_section() {
        let config = load(&format!(
            r#"
[auth]
secret = "${{JWT_SECRET}}"
public_key_file = "ec.pub.pem"
jwks_file = "{FIXTURES}/jwks.json"
tenant_claim = "org"
role_claim = "app_role"
leeway_secs = 5
audience = "walcast"
issuer = "https://auth.example.com/"
allow_anonymous = true

[[auth.rules]]
role = "member"
table = "public.tasks"
filter = ["owner_id=eq.{{sub}}", "org_id=in.({{orgs}})"]

[[auth.rules]]
role = "admin"
table = "*"

{TENANTS}jwt_secret = "per-tenant-secret-0123456789-0123456789"
"#
        ))
        .unwrap();
        let auth = &config.auth;
        assert!(auth.secret.is_some());
        assert!(auth.tenant_secrets.contains_key("acme"));
        let keys: Vec<_> = auth
            .public_keys
            .iter()
            .map(|k| (k.kid(), k.alg()))
            .collect();
        assert_eq!(
            keys,
            [
                (None, KeyAlg::Es256),
                (Some("rsa-1"), KeyAlg::Rs256),
                (Some("rsa-2"), KeyAlg::Rs256),
                (Some("ec-1"), KeyAlg::Es256)
            ]
        );
        assert_eq!(
            (auth.tenant_claim.as_str(), auth.role_claim.as_str()),
            ("org", "app_role")
        );
        assert_eq!(auth.leeway_secs, 5);
        assert_eq!(auth.audience.as_deref(), Some("walcast"));
        assert_eq!(auth.issuer.as_deref(), Some("https://auth.example.com/"));
        assert!(auth.allow_anonymous);
        assert_eq!(auth.rules.len(), 2);
        assert_eq!(
            auth.rules[0].table,
            TableMatch::Table(TableName::new("public", "tasks"))
        );
        assert_eq!(auth.rules[0].filters[1].to_string(), "org_id=in.({orgs})");
        assert_eq!(auth.rules[1].table, TableMatch::Any);
        let shown = format!("{config:?}");
        assert!(
            !shown.contains(SECRET) && !shown.contains("per-tenant-secret"),
            "{shown}"
        );
    }

    #[test]
    fn without_auth_every_request_is_refused() {
        let config = load(TENANTS).unwrap();
        assert!(config.auth.rules.is_empty() && config.auth.public_keys.is_empty());
        assert_eq!(
            (config.auth.tenant_claim.as_str(), config.auth.leeway_secs),
            ("tenant", 30)
        );
        let auth = Authenticator::new(&config.auth);
        assert!(auth.verify("", "acme", 0).is_err());
        // A tenant's own secret is enough to turn auth on.
        let config = load(&format!("{TENANTS}jwt_secret = \"${{JWT_SECRET}}\"\n")).unwrap();
        assert!(config.auth.tenant_secrets.contains_key("acme"));
    }

    #[test]
    fn errors_point_at_the_value_and_say_what_to_write() {
        let rule = |body: &str| {
            format!("[auth]\nsecret = \"${{JWT_SECRET}}\"\n[[auth.rules]]\n{body}\n{TENANTS}")
        };
        let cases = [
            (format!("[auth]\nsecrett = \"x\"\n{TENANTS}"), "walcast.toml:2:1: unknown field `secrett`"),
            (rule("role = \"a\"\ntable = \"*\"\nfilters = []"), "walcast.toml:6:1: unknown field `filters`"),
            (rule("table = \"*\""), "missing field `role`"),
            (format!("[auth]\nsecret = \"${{SHORT}}\"\n{TENANTS}"), "walcast.toml:2:10: the secret is 4 bytes long; HS256 needs at least 32"),
            (format!("[auth]\nsecret = \"${{NOPE}}\"\n{TENANTS}"), "walcast.toml:2:10: environment variable NOPE is not set"),
            (format!("{TENANTS}jwt_secret = \"short\"\n"), "walcast.toml:5:14: the secret is 5 bytes long"),
            (format!("[auth]\npublic_key_file = \"missing.pem\"\n{TENANTS}"), "walcast.toml:2:19: could not read public_key_file missing.pem: No such file"),
            (format!("[auth]\npublic_key_file = \"rsa.private.pem\"\n{TENANTS}"), "walcast.toml:2:19: public_key_file rsa.private.pem: holds a private key"),
            (format!("[auth]\npublic_key_file = \"ec384.pub.pem\"\n{TENANTS}"), "public_key_file ec384.pub.pem: holds an EC key on a curve other than P-256"),
            (format!("[auth]\njwks_file = \"rsa.pub.pem\"\n{TENANTS}"), "walcast.toml:2:13: jwks_file rsa.pub.pem: is not a JWKS document"),
            (format!("[auth]\ntenant_claim = \"\"\nallow_anonymous = true\n{TENANTS}"), "walcast.toml:2:16: tenant_claim is empty"),
            (format!("[auth]\nleeway_secs = 3600\nallow_anonymous = true\n{TENANTS}"), "walcast.toml:2:15: leeway_secs must be at most 300"),
            (format!("[auth]\naudience = \"\"\nallow_anonymous = true\n{TENANTS}"), "walcast.toml:2:12: audience is empty"),
            (format!("[auth]\ntenant_claim = \"org\"\n{TENANTS}"), "walcast.toml:1:1: [auth] has no key"),
            (rule("role = \"a\"\ntable = \"public.other\""), "walcast.toml:5:9: rule table public.other is not in any tenant's tables"),
            (rule("role = \"a\"\ntable = \"public.tasks; x\""), "table \"public.tasks; x\" is not valid: write schema.table"),
            (rule("role = \"\"\ntable = \"*\""), "walcast.toml:4:8: role is empty"),
            (rule("role = \"a\"\ntable = \"tasks\"\nfilter = [\"owner=eq.{sub\"]"), "walcast.toml:6:11: filter \"owner=eq.{sub\": an unclosed '{'"),
            (rule("role = \"a\"\ntable = \"tasks\"\nfilter = [\"owner=like.x\"]"), "unknown operator \"like\""),
            (rule("role = \"a\"\ntable = \"tasks\"\n[[auth.rules]]\nrole = \"a\"\ntable = \"public.tasks\""), "walcast.toml:8:9: role \"a\" has two rules for table public.tasks"),
        ];
        for (text, expected) in cases {
            let err = load(&text).unwrap_err();
            assert!(
                err.contains(expected),
                "{err:?} should contain {expected:?}"
            );
        }
    }
}
