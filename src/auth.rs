//! Who may read what: JWT verification → `Principal`, the tenant claim check,
//! per-role table rules, and row filters bound to claims.
//!
//! Owns the verification keys (HS256 secrets, RS256/ES256 public keys from a
//! PEM or a JWKS file, parsed once when the configuration is loaded), the
//! token checks (signature, `exp`/`nbf` with leeway, `iss`, `aud`, the tenant
//! claim against the tenant in the path) and `[[auth.rules]]`. Must not: know
//! HTTP types, do I/O while verifying, or put a token or a secret into an
//! error, a log line or a `Debug` output.
//!
//! The algorithm a token is verified with comes from the configured key,
//! never from the token alone: the header's `alg` only picks among keys
//! walcast has, so `alg: none` and an HS256 token "signed" with an RSA public
//! key (algorithm confusion) have no key to verify against.
//!
//! Rules deny by default. For a principal's role, a rule naming the table
//! wins over a `table = "*"` rule; there is one rule per (role, table). Filter
//! templates such as `owner_id=eq.{sub}` are parsed once at load; claims are
//! substituted into the parsed values, never into filter text, so a claim
//! holding `,`, `)` or `"` is one literal value and cannot add conditions or
//! list items.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::filter::{FilterOp, RowFilter};
use crate::model::TableName;

/// The claim holding the tenant id, unless `auth.tenant_claim` says otherwise.
pub const DEFAULT_TENANT_CLAIM: &str = "tenant";
/// The claim holding the role, unless `auth.role_claim` says otherwise.
pub const DEFAULT_ROLE_CLAIM: &str = "role";
/// Clock skew tolerated on `exp` and `nbf`, in seconds.
pub const DEFAULT_LEEWAY_SECS: u64 = 30;
pub const MAX_LEEWAY_SECS: u64 = 300;
/// The role of a request without a token when `allow_anonymous = true`.
pub const ANON_ROLE: &str = "anon";
/// RFC 7518 §3.2: an HS256 key must be at least as long as the hash output.
pub const MIN_SECRET_BYTES: usize = 32;
/// Longer tokens are refused before any decoding.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;
/// Attacker-chosen text (a `kid`, an `alg`, a claim) is cut to this many
/// characters before it goes into an error message.
const MAX_SHOWN_CHARS: usize = 64;

/// A signature algorithm walcast verifies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyAlg {
    Hs256,
    Rs256,
    Es256,
}

impl KeyAlg {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyAlg::Hs256 => "HS256",
            KeyAlg::Rs256 => "RS256",
            KeyAlg::Es256 => "ES256",
        }
    }

    fn from_header(alg: &str) -> Option<KeyAlg> {
        match alg {
            "HS256" => Some(KeyAlg::Hs256),
            "RS256" => Some(KeyAlg::Rs256),
            "ES256" => Some(KeyAlg::Es256),
            _ => None,
        }
    }

    fn jwt(self) -> Algorithm {
        match self {
            KeyAlg::Hs256 => Algorithm::HS256,
            KeyAlg::Rs256 => Algorithm::RS256,
            KeyAlg::Es256 => Algorithm::ES256,
        }
    }
}

/// An HS256 shared secret. Never printed.
#[derive(Clone)]
pub struct Secret(DecodingKey);

impl Secret {
    /// The secret's bytes as written (not base64-decoded).
    pub fn new(bytes: &[u8]) -> Result<Secret, String> {
        if bytes.len() < MIN_SECRET_BYTES {
            return Err(format!(
                "the secret is {} bytes long; HS256 needs at least {MIN_SECRET_BYTES} (make one with: openssl rand -base64 32)",
                bytes.len()
            ));
        }
        Ok(Secret(DecodingKey::from_secret(bytes)))
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// A public key that verifies RS256 or ES256 signatures, from a PEM file or
/// one entry of a JWKS file.
#[derive(Clone)]
pub struct VerifyingKey {
    kid: Option<String>,
    alg: KeyAlg,
    key: DecodingKey,
    source: PathBuf,
}

impl fmt::Debug for VerifyingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifyingKey")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .field("source", &self.source)
            .finish()
    }
}

impl VerifyingKey {
    pub fn kid(&self) -> Option<&str> {
        self.kid.as_deref()
    }

    pub fn alg(&self) -> KeyAlg {
        self.alg
    }

    /// A PEM public key: RSA (RS256) or EC on P-256 (ES256). The error says
    /// what the file holds instead and how to get the right thing.
    pub fn from_pem(pem: &[u8], source: &Path) -> Result<VerifyingKey, String> {
        let text = std::str::from_utf8(pem).map_err(|_| {
            "is not a PEM file (it is not text); expected -----BEGIN PUBLIC KEY-----".to_string()
        })?;
        if text.contains("PRIVATE KEY-----") {
            return Err("holds a private key; give walcast only the public key: openssl pkey -in private.pem -pubout -out public.pem".into());
        }
        if text.contains("CERTIFICATE-----") {
            return Err("holds a certificate; give walcast its public key: openssl x509 -in cert.pem -pubkey -noout > public.pem".into());
        }
        let key_with = |alg, key| VerifyingKey {
            kid: None,
            alg,
            key,
            source: source.to_owned(),
        };
        if let Ok(key) = DecodingKey::from_rsa_pem(pem) {
            return Ok(key_with(KeyAlg::Rs256, key));
        }
        if let Ok(key) = DecodingKey::from_ec_pem(pem) {
            // An uncompressed P-256 point is 1 + 32 + 32 bytes.
            return match key.try_get_as_bytes().map(<[u8]>::len) {
                Ok(65) => Ok(key_with(KeyAlg::Es256, key)),
                _ => Err("holds an EC key on a curve other than P-256; walcast verifies ES256 (P-256) and RS256 only".into()),
            };
        }
        Err("is not a PEM public key walcast can use; expected an RSA (RS256) or EC P-256 (ES256) key starting with -----BEGIN PUBLIC KEY-----".into())
    }

    /// The RS256 and ES256 (P-256) signing keys of a JWKS document. Keys for
    /// encryption and of other types or algorithms are skipped; none left is
    /// an error.
    pub fn from_jwks(json: &[u8], source: &Path) -> Result<Vec<VerifyingKey>, String> {
        let set: JwkSet = serde_json::from_slice(json).map_err(|err| {
            format!("is not a JWKS document ({err}); expected {{\"keys\": [{{\"kty\": \"RSA\", \"kid\": ..., \"n\": ..., \"e\": ...}}]}}")
        })?;
        let mut keys: Vec<VerifyingKey> = Vec::new();
        for jwk in &set.keys {
            if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
                continue;
            }
            let alg = match &jwk.algorithm {
                AlgorithmParameters::RSA(_) => KeyAlg::Rs256,
                AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => {
                    KeyAlg::Es256
                }
                _ => continue,
            };
            let declared_ok = match jwk.common.key_algorithm {
                None => true,
                Some(KeyAlgorithm::RS256) => alg == KeyAlg::Rs256,
                Some(KeyAlgorithm::ES256) => alg == KeyAlg::Es256,
                Some(_) => false,
            };
            if !declared_ok {
                continue;
            }
            let kid = jwk.common.key_id.clone();
            let name = kid.as_deref().unwrap_or("without kid");
            let key = DecodingKey::from_jwk(jwk).map_err(|err| {
                format!("key {name:?} is not a valid {} key ({err})", alg.as_str())
            })?;
            if kid.is_some() && keys.iter().any(|k| k.kid == kid) {
                return Err(format!(
                    "has two keys with kid {name:?}; give every key its own kid"
                ));
            }
            keys.push(VerifyingKey {
                kid,
                alg,
                key,
                source: source.to_owned(),
            });
        }
        if keys.is_empty() {
            return Err("has no RS256 or ES256 (P-256) signing key; walcast verifies only those (use secret for HS256)".into());
        }
        Ok(keys)
    }
}

/// Which tables a rule covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TableMatch {
    /// `table = "*"`: every table (a rule naming the table wins).
    Any,
    Table(TableName),
}

impl fmt::Display for TableMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TableMatch::Any => f.write_str("*"),
            TableMatch::Table(t) => t.fmt(f),
        }
    }
}

/// One `[[auth.rules]]` entry: a role may read a table, with these filters.
#[derive(Debug, Clone, PartialEq)]
pub struct AccessRule {
    pub role: String,
    pub table: TableMatch,
    pub filters: Vec<FilterTemplate>,
}

/// A row filter whose values may hold `{claim}` placeholders, parsed once.
#[derive(Debug, Clone, PartialEq)]
pub struct FilterTemplate {
    column: Arc<str>,
    op: TemplateOp,
    text: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Comparison {
    Eq,
    Neq,
    Lt,
    Lte,
    Gt,
    Gte,
}

#[derive(Debug, Clone, PartialEq)]
enum TemplateOp {
    Compare(Comparison, ValueTemplate),
    In(Vec<ValueTemplate>),
    IsNull,
    NotNull,
}

/// Literal text and claim placeholders, in order.
#[derive(Debug, Clone, PartialEq)]
struct ValueTemplate(Vec<Part>);

#[derive(Debug, Clone, PartialEq)]
enum Part {
    Text(String),
    Claim(String),
}

impl FilterTemplate {
    /// `column=op.value` as clients write filters, where a value (or a whole
    /// `in.(...)` item) may be `{claim}`.
    pub fn parse(text: &str) -> Result<FilterTemplate, String> {
        let filter = RowFilter::parse(text).map_err(|err| err.to_string())?;
        if filter.column.contains(['{', '}']) {
            return Err(format!(
                "filter {text:?}: a {{claim}} placeholder may stand only in the value, not in the column name"
            ));
        }
        let value = |v: &str| ValueTemplate::parse(v).map_err(|p| format!("filter {text:?}: {p}"));
        let op = match &filter.op {
            FilterOp::Eq(v) => TemplateOp::Compare(Comparison::Eq, value(v)?),
            FilterOp::Neq(v) => TemplateOp::Compare(Comparison::Neq, value(v)?),
            FilterOp::Lt(v) => TemplateOp::Compare(Comparison::Lt, value(v)?),
            FilterOp::Lte(v) => TemplateOp::Compare(Comparison::Lte, value(v)?),
            FilterOp::Gt(v) => TemplateOp::Compare(Comparison::Gt, value(v)?),
            FilterOp::Gte(v) => TemplateOp::Compare(Comparison::Gte, value(v)?),
            FilterOp::In(list) => {
                TemplateOp::In(list.iter().map(|v| value(v)).collect::<Result<_, _>>()?)
            }
            FilterOp::IsNull => TemplateOp::IsNull,
            FilterOp::NotNull => TemplateOp::NotNull,
        };
        Ok(FilterTemplate {
            column: filter.column,
            op,
            text: text.to_owned(),
        })
    }

    /// The filter with the claims substituted, or the name of the first
    /// claim that is missing or not usable (the rule then denies).
    ///
    /// A claim in a value must be a string, number or boolean. A whole
    /// `in.(...)` item that is one placeholder also takes an array of those,
    /// one item per element; a string is always one item, commas and all.
    pub fn bind(&self, claims: &Map<String, Value>) -> Result<RowFilter, String> {
        let op = match &self.op {
            TemplateOp::Compare(cmp, value) => {
                let v = value.render(claims)?;
                match cmp {
                    Comparison::Eq => FilterOp::Eq(v),
                    Comparison::Neq => FilterOp::Neq(v),
                    Comparison::Lt => FilterOp::Lt(v),
                    Comparison::Lte => FilterOp::Lte(v),
                    Comparison::Gt => FilterOp::Gt(v),
                    Comparison::Gte => FilterOp::Gte(v),
                }
            }
            TemplateOp::In(items) => {
                let mut list = Vec::with_capacity(items.len());
                for item in items {
                    match item.0.as_slice() {
                        [Part::Claim(name)] => match claims.get(name) {
                            Some(Value::Array(values)) => {
                                for v in values {
                                    list.push(scalar(v).ok_or_else(|| name.clone())?);
                                }
                            }
                            Some(v) => list.push(scalar(v).ok_or_else(|| name.clone())?),
                            None => return Err(name.clone()),
                        },
                        _ => list.push(item.render(claims)?),
                    }
                }
                FilterOp::In(list)
            }
            TemplateOp::IsNull => FilterOp::IsNull,
            TemplateOp::NotNull => FilterOp::NotNull,
        };
        Ok(RowFilter {
            column: Arc::clone(&self.column),
            op,
        })
    }
}

impl fmt::Display for FilterTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl ValueTemplate {
    fn parse(text: &str) -> Result<ValueTemplate, String> {
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(open) = rest.find(['{', '}']) {
            if rest[open..].starts_with('}') {
                return Err("a '}' without '{'; write a claim placeholder as {claim_name} (filter values cannot hold literal braces)".into());
            }
            if open > 0 {
                parts.push(Part::Text(rest[..open].to_owned()));
            }
            let after = &rest[open + 1..];
            let close = after
                .find('}')
                .ok_or("an unclosed '{'; write a claim placeholder as {claim_name}")?;
            let name = &after[..close];
            if name.is_empty() || name.contains('{') {
                return Err(format!(
                    "{{{name}}} is not a claim placeholder; write {{claim_name}}, like {{sub}}"
                ));
            }
            parts.push(Part::Claim(name.to_owned()));
            rest = &after[close + 1..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_owned()));
        }
        Ok(ValueTemplate(parts))
    }

    fn render(&self, claims: &Map<String, Value>) -> Result<String, String> {
        let mut out = String::new();
        for part in &self.0 {
            match part {
                Part::Text(t) => out.push_str(t),
                Part::Claim(name) => out.push_str(
                    &claims
                        .get(name)
                        .and_then(scalar)
                        .ok_or_else(|| name.clone())?,
                ),
            }
        }
        Ok(out)
    }
}

/// A claim value as filter text: strings as they are, numbers and booleans
/// in their JSON form; null, arrays and objects are not usable.
fn scalar(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Null | Value::Array(_) | Value::Object(_) => None,
    }
}

/// The validated `[auth]` section (with the tenants' `jwt_secret`s).
#[derive(Debug, Clone)]
pub struct AuthConfig {
    /// HS256 secret for every tenant without a `jwt_secret` of its own.
    pub secret: Option<Secret>,
    /// HS256 secrets by tenant id; a tenant's secret replaces `secret`.
    pub tenant_secrets: BTreeMap<String, Secret>,
    /// RS256/ES256 keys from `public_key_file` and `jwks_file`, for every tenant.
    pub public_keys: Vec<VerifyingKey>,
    pub tenant_claim: String,
    pub role_claim: String,
    pub leeway_secs: u64,
    pub audience: Option<String>,
    pub issuer: Option<String>,
    pub allow_anonymous: bool,
    pub rules: Vec<AccessRule>,
}

impl Default for AuthConfig {
    /// No keys and no rules: every request is refused.
    fn default() -> Self {
        AuthConfig {
            secret: None,
            tenant_secrets: BTreeMap::new(),
            public_keys: Vec::new(),
            tenant_claim: DEFAULT_TENANT_CLAIM.into(),
            role_claim: DEFAULT_ROLE_CLAIM.into(),
            leeway_secs: DEFAULT_LEEWAY_SECS,
            audience: None,
            issuer: None,
            allow_anonymous: false,
            rules: Vec::new(),
        }
    }
}

/// Why a request may not have what it asks for. Messages say what is wrong
/// and how to fix it; they never hold the token or a secret, and text taken
/// from the token (kid, alg, claims) is shortened and quoted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("no token: send it as Authorization: Bearer <jwt>, or as ?access_token=<jwt> where headers cannot be set")]
    Missing,
    #[error("the token is not a usable JWT: {problem}; send a signed JWT (three base64url parts separated by '.')")]
    Malformed { problem: &'static str },
    #[error("the token's signature does not verify with walcast's {alg} key; sign it with the configured secret or private key")]
    BadSignature { alg: &'static str },
    #[error("the token expired at {expired_at} (unix seconds; now {now}, leeway {leeway_secs} s); get a fresh token")]
    Expired {
        expired_at: u64,
        now: u64,
        leeway_secs: u64,
    },
    #[error("the token is not valid before {not_before} (unix seconds; now {now}); check the issuer's clock")]
    NotYetValid { not_before: u64, now: u64 },
    #[error(
        "the token has no exp claim; walcast accepts only tokens that expire, so mint it with exp"
    )]
    NoExpiry,
    #[error("the token's iss is not {expected:?}; use a token from the configured issuer")]
    WrongIssuer { expected: String },
    #[error("the token's aud does not include {expected:?}; mint it for that audience")]
    WrongAudience { expected: String },
    #[error("{}", wrong_tenant(expected, found.as_deref(), claim))]
    WrongTenant {
        expected: String,
        found: Option<String>,
        claim: String,
    },
    #[error("{}", unknown_key(kid.as_deref(), alg))]
    UnknownKey {
        kid: Option<String>,
        alg: &'static str,
    },
    #[error("{}", algorithm_not_allowed(alg, allowed))]
    AlgorithmNotAllowed {
        alg: String,
        allowed: Vec<&'static str>,
    },
    #[error(
        "the token has no {claim:?} claim naming its role (a non-empty string); mint it with one"
    )]
    NoRole { claim: String },
    #[error("role {role:?} may not read {table}: no [[auth.rules]] entry gives it this table (rules deny by default); add a rule or use a token with another role")]
    TableDenied { table: String, role: String },
    #[error("role {role:?} may read {table} only with the token's {claim:?} claim (a string, number or boolean, or for in.(...) an array of them), and the token has none; mint it with that claim")]
    ClaimMissing {
        table: String,
        role: String,
        claim: String,
    },
}

fn wrong_tenant(expected: &str, found: Option<&str>, claim: &str) -> String {
    match found {
        Some(found) => format!("the token is for tenant {found:?}, not {expected:?}; use a token whose {claim:?} claim is {expected:?}"),
        None => format!("the token has no string {claim:?} claim; use a token whose {claim:?} claim is {expected:?}"),
    }
}

fn unknown_key(kid: Option<&str>, alg: &str) -> String {
    match kid {
        Some(kid) => format!("walcast has no {alg} key with kid {kid:?}; sign with a key from the configured JWKS (or reload walcast with the new JWKS)"),
        None => format!("the token has no kid and walcast has several {alg} keys; put the signing key's kid in the token header"),
    }
}

fn algorithm_not_allowed(alg: &str, allowed: &[&str]) -> String {
    if allowed.is_empty() {
        format!("the token is signed with {alg:?}, and walcast has no key for this tenant; configure [auth] secret, public_key_file or jwks_file (or the tenant's jwt_secret)")
    } else {
        format!(
            "the token is signed with {alg:?}, which walcast does not accept here: its configured keys verify {}; sign with one of those",
            allowed.join(", ")
        )
    }
}

impl AuthError {
    /// The HTTP status: 401 when the caller is not authenticated, 403 when it
    /// is but may not have what it asks for.
    pub fn status(&self) -> u16 {
        match self {
            AuthError::WrongTenant { .. }
            | AuthError::NoRole { .. }
            | AuthError::TableDenied { .. }
            | AuthError::ClaimMissing { .. } => 403,
            _ => 401,
        }
    }

    /// A stable machine-readable name, for error bodies and metric labels.
    pub fn code(&self) -> &'static str {
        match self {
            AuthError::Missing => "missing_token",
            AuthError::Malformed { .. } => "malformed_token",
            AuthError::BadSignature { .. } => "bad_signature",
            AuthError::Expired { .. } => "expired",
            AuthError::NotYetValid { .. } => "not_yet_valid",
            AuthError::NoExpiry => "no_expiry",
            AuthError::WrongIssuer { .. } => "wrong_issuer",
            AuthError::WrongAudience { .. } => "wrong_audience",
            AuthError::WrongTenant { .. } => "wrong_tenant",
            AuthError::UnknownKey { .. } => "unknown_key",
            AuthError::AlgorithmNotAllowed { .. } => "algorithm_not_allowed",
            AuthError::NoRole { .. } => "no_role",
            AuthError::TableDenied { .. } => "table_denied",
            AuthError::ClaimMissing { .. } => "claim_missing",
        }
    }
}

/// The token from an `Authorization` header value (`Bearer <jwt>`, any case).
pub fn bearer_token(authorization: &str) -> Result<&str, AuthError> {
    let value = authorization.trim();
    match value.split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => Ok(token.trim()),
        _ => Err(AuthError::Malformed {
            problem: "the Authorization header is not \"Bearer <token>\"",
        }),
    }
}

/// Verifies tokens and builds principals; made once from the configuration,
/// then shared (`Clone` is cheap).
#[derive(Debug, Clone)]
pub struct Authenticator {
    config: Arc<AuthConfig>,
}

/// Who a request is, and what it may read.
#[derive(Debug, Clone)]
pub struct Principal {
    pub tenant: String,
    pub role: String,
    /// Every claim of the verified token (empty for anonymous requests).
    pub claims: Map<String, Value>,
    /// The token's `exp` (unix seconds); `None` for anonymous requests.
    pub expires_at: Option<u64>,
    leeway_secs: u64,
    /// The role's rules with the claims substituted.
    access: Vec<Access>,
}

#[derive(Debug, Clone)]
struct Access {
    table: TableMatch,
    /// `Err(claim)`: the rule needs a claim the token lacks, so it denies.
    filters: Result<Vec<RowFilter>, String>,
}

#[derive(Deserialize)]
struct JwtHeader {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    crit: Option<Value>,
}

impl Authenticator {
    /// A principal of role `anon` that may read every table of `tenant`
    /// (for tests, benches and fuzz targets).
    #[doc(hidden)]
    pub fn anonymous_reader(tenant: &str) -> Principal {
        let config = AuthConfig {
            allow_anonymous: true,
            rules: vec![AccessRule {
                role: ANON_ROLE.into(),
                table: TableMatch::Any,
                filters: Vec::new(),
            }],
            ..AuthConfig::default()
        };
        Authenticator::new(&config)
            .verify("", tenant, 0)
            .expect("an anonymous request is allowed")
    }

    pub fn new(config: &AuthConfig) -> Authenticator {
        Authenticator {
            config: Arc::new(config.clone()),
        }
    }

    /// Clock skew allowed on `exp` and `nbf`, in seconds.
    pub fn leeway_secs(&self) -> u64 {
        self.config.leeway_secs
    }

    pub fn allow_anonymous(&self) -> bool {
        self.config.allow_anonymous
    }

    /// Verifies `token` (the bare JWT; empty when the request carries none)
    /// for the tenant named in the request path, at `now_unix` seconds.
    pub fn verify(
        &self,
        token: &str,
        tenant_in_path: &str,
        now_unix: u64,
    ) -> Result<Principal, AuthError> {
        let config = &*self.config;
        let token = token.trim();
        if token.is_empty() {
            if config.allow_anonymous {
                return Ok(self.principal(tenant_in_path, ANON_ROLE, Map::new(), None));
            }
            return Err(AuthError::Missing);
        }
        let claims = self.verified_claims(token, tenant_in_path)?;
        let leeway = config.leeway_secs;
        let expires_at = match claims.get("exp") {
            None => return Err(AuthError::NoExpiry),
            Some(v) => unix_seconds(v).ok_or(AuthError::Malformed {
                problem: "exp is not a number of seconds",
            })?,
        };
        if now_unix > expires_at.saturating_add(leeway) {
            return Err(AuthError::Expired {
                expired_at: expires_at,
                now: now_unix,
                leeway_secs: leeway,
            });
        }
        if let Some(v) = claims.get("nbf") {
            let not_before = unix_seconds(v).ok_or(AuthError::Malformed {
                problem: "nbf is not a number of seconds",
            })?;
            if not_before > now_unix.saturating_add(leeway) {
                return Err(AuthError::NotYetValid {
                    not_before,
                    now: now_unix,
                });
            }
        }
        if let Some(issuer) = &config.issuer {
            if claims.get("iss").and_then(Value::as_str) != Some(issuer.as_str()) {
                return Err(AuthError::WrongIssuer {
                    expected: issuer.clone(),
                });
            }
        }
        if let Some(audience) = &config.audience {
            let ok = match claims.get("aud") {
                Some(Value::String(aud)) => aud == audience,
                Some(Value::Array(auds)) => auds.iter().any(|a| a.as_str() == Some(audience)),
                _ => false,
            };
            if !ok {
                return Err(AuthError::WrongAudience {
                    expected: audience.clone(),
                });
            }
        }
        match claims.get(&config.tenant_claim) {
            Some(Value::String(t)) if t == tenant_in_path => {}
            other => {
                return Err(AuthError::WrongTenant {
                    expected: shown(tenant_in_path),
                    found: other.and_then(Value::as_str).map(shown),
                    claim: config.tenant_claim.clone(),
                })
            }
        }
        let role = match claims.get(&config.role_claim) {
            Some(Value::String(r)) if !r.is_empty() => r.clone(),
            _ => {
                return Err(AuthError::NoRole {
                    claim: config.role_claim.clone(),
                })
            }
        };
        Ok(self.principal(tenant_in_path, &role, claims, Some(expires_at)))
    }

    fn principal(
        &self,
        tenant: &str,
        role: &str,
        claims: Map<String, Value>,
        expires_at: Option<u64>,
    ) -> Principal {
        let access = self
            .config
            .rules
            .iter()
            .filter(|r| r.role == role)
            .map(|rule| Access {
                table: rule.table.clone(),
                filters: rule.filters.iter().map(|f| f.bind(&claims)).collect(),
            })
            .collect();
        Principal {
            tenant: tenant.to_owned(),
            role: role.to_owned(),
            claims,
            expires_at,
            leeway_secs: self.config.leeway_secs,
            access,
        }
    }

    /// The claims of a token whose signature verifies with the key walcast
    /// has for the header's algorithm (and kid).
    fn verified_claims(&self, token: &str, tenant: &str) -> Result<Map<String, Value>, AuthError> {
        let malformed = |problem| AuthError::Malformed { problem };
        if token.len() > MAX_TOKEN_BYTES {
            return Err(malformed("it is longer than 16384 bytes"));
        }
        let parts: Vec<&str> = token.split('.').collect();
        let [header, payload, signature] = parts[..] else {
            return Err(malformed(if parts.len() == 5 {
                "it is encrypted (JWE), and walcast reads only signed tokens (JWS)"
            } else {
                "it does not have three parts separated by '.'"
            }));
        };
        let header: JwtHeader = decode_json(header).ok_or(malformed(
            "its header is not base64url-encoded JSON with an alg",
        ))?;
        if header.crit.is_some() {
            return Err(malformed(
                "its header lists crit extensions, which walcast does not implement",
            ));
        }
        let (key, alg) = self.key_for(&header, tenant)?;
        let signed = &token[..header_and_payload_len(token)];
        match jsonwebtoken::crypto::verify(signature, signed.as_bytes(), key, alg.jwt()) {
            Ok(true) => {}
            Ok(false) => return Err(AuthError::BadSignature { alg: alg.as_str() }),
            Err(err) if matches!(err.kind(), ErrorKind::Base64(_)) => {
                return Err(malformed("its signature is not base64url"))
            }
            Err(_) => return Err(AuthError::BadSignature { alg: alg.as_str() }),
        }
        decode_json(payload).ok_or(malformed(
            "its payload is not a base64url-encoded JSON object",
        ))
    }

    /// The key a token must verify with: chosen among the configured keys by
    /// the header's alg and kid; the key fixes the algorithm.
    fn key_for(
        &self,
        header: &JwtHeader,
        tenant: &str,
    ) -> Result<(&DecodingKey, KeyAlg), AuthError> {
        let config = &*self.config;
        let not_allowed = || AuthError::AlgorithmNotAllowed {
            alg: shown(&header.alg),
            allowed: self.allowed_algorithms(tenant),
        };
        match KeyAlg::from_header(&header.alg) {
            None => Err(not_allowed()),
            Some(KeyAlg::Hs256) => config
                .tenant_secrets
                .get(tenant)
                .or(config.secret.as_ref())
                .map(|s| (&s.0, KeyAlg::Hs256))
                .ok_or_else(not_allowed),
            Some(alg) => {
                let candidates: Vec<&VerifyingKey> =
                    config.public_keys.iter().filter(|k| k.alg == alg).collect();
                if candidates.is_empty() {
                    return Err(not_allowed());
                }
                let without_kid = candidates.iter().find(|k| k.kid.is_none());
                let found = match header.kid.as_deref() {
                    Some(kid) => candidates
                        .iter()
                        .find(|k| k.kid.as_deref() == Some(kid))
                        .or(without_kid),
                    None if candidates.len() == 1 => candidates.first(),
                    None => without_kid,
                };
                found
                    .map(|k| (&k.key, alg))
                    .ok_or_else(|| AuthError::UnknownKey {
                        kid: header.kid.as_deref().map(shown),
                        alg: alg.as_str(),
                    })
            }
        }
    }

    fn allowed_algorithms(&self, tenant: &str) -> Vec<&'static str> {
        let config = &*self.config;
        let mut allowed = Vec::new();
        if config.secret.is_some() || config.tenant_secrets.contains_key(tenant) {
            allowed.push(KeyAlg::Hs256.as_str());
        }
        for alg in [KeyAlg::Rs256, KeyAlg::Es256] {
            if config.public_keys.iter().any(|k| k.alg == alg) {
                allowed.push(alg.as_str());
            }
        }
        allowed
    }
}

impl Principal {
    /// The row filters this principal must have on `table`, AND-ed on top of
    /// the client's own; `Err` when the table is not allowed (no rule for the
    /// role, or the rule needs a claim the token lacks).
    pub fn table_access(&self, table: &TableName) -> Result<Vec<RowFilter>, AuthError> {
        let named = self
            .access
            .iter()
            .find(|a| matches!(&a.table, TableMatch::Table(t) if t == table));
        let rule = named.or_else(|| self.access.iter().find(|a| a.table == TableMatch::Any));
        match rule {
            None => Err(AuthError::TableDenied {
                table: table.to_string(),
                role: shown(&self.role),
            }),
            Some(Access {
                filters: Err(claim),
                ..
            }) => Err(AuthError::ClaimMissing {
                table: table.to_string(),
                role: shown(&self.role),
                claim: shown(claim),
            }),
            Some(Access {
                filters: Ok(filters),
                ..
            }) => Ok(filters.clone()),
        }
    }

    /// Whether logical messages (`pg_logical_emit_message`) may be read:
    /// they belong to no table, so only a role with a `table = "*"` rule
    /// without filters may see them.
    pub fn may_read_messages(&self) -> bool {
        self.access
            .iter()
            .any(|a| a.table == TableMatch::Any && matches!(&a.filters, Ok(f) if f.is_empty()))
    }

    /// Whether the token has expired at `now_unix` (with the configured
    /// leeway); a WebSocket is closed then. Anonymous principals never expire.
    pub fn is_expired(&self, now_unix: u64) -> bool {
        self.expires_at
            .is_some_and(|exp| now_unix > exp.saturating_add(self.leeway_secs))
    }
}

fn header_and_payload_len(token: &str) -> usize {
    token.rfind('.').unwrap_or(token.len())
}

fn decode_json<T: serde::de::DeserializeOwned>(part: &str) -> Option<T> {
    let bytes = URL_SAFE_NO_PAD.decode(part).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// `exp`/`nbf`: NumericDate, seconds since the epoch (fractions allowed).
fn unix_seconds(value: &Value) -> Option<u64> {
    match value {
        Value::Number(n) => n.as_u64().or_else(|| {
            n.as_f64()
                .filter(|f| f.is_finite() && *f >= 0.0)
                .map(|f| f as u64)
        }),
        _ => None,
    }
}

/// Text from a token, shortened for an error message (which quotes it).
fn shown(text: &str) -> String {
    if text.chars().count() <= MAX_SHOWN_CHARS {
        text.to_owned()
    } else {
        let mut s: String = text.chars().take(MAX_SHOWN_CHARS).collect();
        s.push('…');
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Datum, RowImage};
    use jsonwebtoken::{EncodingKey, Header};
    use serde_json::json;

    const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/auth");
    const SECRET: &str = "test-only-secret-0123456789-0123456789";
    const NOW: u64 = 1_800_000_000;

    fn fixture(name: &str) -> Vec<u8> {
        let path = format!("{FIXTURES}/{name}");
        std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    fn tasks() -> TableName {
        TableName::new("public", "tasks")
    }

    /// acme, role member, sub u1, valid for ten minutes; `extra` overrides
    /// (a null removes the claim).
    fn claims(extra: Value) -> Map<String, Value> {
        let mut claims = json!({"tenant": "acme", "role": "member", "sub": "u1", "exp": NOW + 600})
            .as_object()
            .unwrap()
            .clone();
        for (k, v) in extra.as_object().unwrap() {
            if v.is_null() {
                claims.remove(k);
            } else {
                claims.insert(k.clone(), v.clone());
            }
        }
        claims
    }

    fn sign(
        alg: Algorithm,
        kid: Option<&str>,
        key: &EncodingKey,
        claims: &Map<String, Value>,
    ) -> String {
        let mut header = Header::new(alg);
        header.kid = kid.map(str::to_owned);
        jsonwebtoken::encode(&header, claims, key).unwrap()
    }

    fn hs256(claims: &Map<String, Value>) -> String {
        sign(
            Algorithm::HS256,
            None,
            &EncodingKey::from_secret(SECRET.as_bytes()),
            claims,
        )
    }

    fn rule(role: &str, table: Option<TableName>, filters: &[&str]) -> AccessRule {
        AccessRule {
            role: role.into(),
            table: table.map_or(TableMatch::Any, TableMatch::Table),
            filters: filters
                .iter()
                .map(|f| FilterTemplate::parse(f).unwrap())
                .collect(),
        }
    }

    fn config() -> AuthConfig {
        AuthConfig {
            secret: Some(Secret::new(SECRET.as_bytes()).unwrap()),
            rules: vec![
                rule("member", Some(tasks()), &["owner_id=eq.{sub}"]),
                rule("admin", None, &[]),
            ],
            ..AuthConfig::default()
        }
    }

    fn with(change: impl FnOnce(&mut AuthConfig)) -> Authenticator {
        let mut config = config();
        change(&mut config);
        Authenticator::new(&config)
    }

    fn pem_key(name: &str) -> VerifyingKey {
        VerifyingKey::from_pem(&fixture(name), Path::new(name)).unwrap()
    }

    fn err(auth: &Authenticator, token: &str) -> AuthError {
        let err = auth.verify(token, "acme", NOW).unwrap_err();
        let text = err.to_string();
        assert!(!token.is_empty() || err == AuthError::Missing);
        assert!(token.is_empty() || !text.contains(token), "{text}");
        for part in token.split('.').filter(|p| p.len() > 8) {
            assert!(!text.contains(part), "{text} shows part of the token");
        }
        assert!(!text.contains(SECRET), "{text}");
        err
    }

    #[test]
    fn hs256_token_gives_a_principal_with_bound_filters() {
        let auth = Authenticator::new(&config());
        let p = auth
            .verify(&hs256(&claims(json!({}))), "acme", NOW)
            .unwrap();
        assert_eq!((p.tenant.as_str(), p.role.as_str()), ("acme", "member"));
        assert_eq!(p.expires_at, Some(NOW + 600));
        assert_eq!(p.claims["sub"], "u1");
        let filters = p.table_access(&tasks()).unwrap();
        assert_eq!(filters.len(), 1);
        assert_eq!(filters[0].to_string(), "owner_id=eq.u1");
        // "Bearer " handling is the caller's, but whitespace is tolerated.
        let padded = format!(" {} ", hs256(&claims(json!({}))));
        assert!(auth.verify(&padded, "acme", NOW).is_ok());
    }

    #[test]
    fn rs256_and_es256_with_pem_keys() {
        let auth = with(|c| {
            c.secret = None;
            c.public_keys = vec![pem_key("rsa.pub.pem"), pem_key("ec.pub.pem")];
        });
        let rsa = EncodingKey::from_rsa_pem(&fixture("rsa.private.pem")).unwrap();
        let ec = EncodingKey::from_ec_pem(&fixture("ec.private.pem")).unwrap();
        let other_rsa = EncodingKey::from_rsa_pem(&fixture("rsa2.private.pem")).unwrap();
        let c = claims(json!({}));
        for token in [
            sign(Algorithm::RS256, None, &rsa, &c),
            sign(Algorithm::ES256, None, &ec, &c),
            // A kid the PEM key does not have still selects it (PEM keys have none).
            sign(Algorithm::RS256, Some("whatever"), &rsa, &c),
        ] {
            let p = auth.verify(&token, "acme", NOW).unwrap();
            assert_eq!(p.role, "member");
        }
        let wrong = sign(Algorithm::RS256, None, &other_rsa, &c);
        assert_eq!(err(&auth, &wrong), AuthError::BadSignature { alg: "RS256" });
        // Not configured: HS256 (no secret here).
        let hs = hs256(&c);
        assert!(
            matches!(err(&auth, &hs), AuthError::AlgorithmNotAllowed { ref allowed, .. } if allowed == &["RS256", "ES256"])
        );
    }

    #[test]
    fn jwks_keys_are_selected_by_kid() {
        let keys = VerifyingKey::from_jwks(&fixture("jwks.json"), Path::new("jwks.json")).unwrap();
        let kids: Vec<_> = keys.iter().map(|k| (k.kid().unwrap(), k.alg())).collect();
        assert_eq!(
            kids,
            [
                ("rsa-1", KeyAlg::Rs256),
                ("rsa-2", KeyAlg::Rs256),
                ("ec-1", KeyAlg::Es256)
            ]
        );
        let auth = with(|c| {
            c.secret = None;
            c.public_keys = keys;
        });
        let rsa1 = EncodingKey::from_rsa_pem(&fixture("rsa.private.pem")).unwrap();
        let rsa2 = EncodingKey::from_rsa_pem(&fixture("rsa2.private.pem")).unwrap();
        let ec = EncodingKey::from_ec_pem(&fixture("ec.private.pem")).unwrap();
        let c = claims(json!({}));
        for token in [
            sign(Algorithm::RS256, Some("rsa-1"), &rsa1, &c),
            sign(Algorithm::RS256, Some("rsa-2"), &rsa2, &c),
            sign(Algorithm::ES256, Some("ec-1"), &ec, &c),
        ] {
            auth.verify(&token, "acme", NOW).unwrap();
        }
        let swapped = sign(Algorithm::RS256, Some("rsa-1"), &rsa2, &c);
        assert_eq!(
            err(&auth, &swapped),
            AuthError::BadSignature { alg: "RS256" }
        );
        let unknown = sign(Algorithm::RS256, Some("rsa-9"), &rsa1, &c);
        let e = err(&auth, &unknown);
        assert_eq!(
            e,
            AuthError::UnknownKey {
                kid: Some("rsa-9".into()),
                alg: "RS256"
            }
        );
        assert_eq!(e.status(), 401);
        assert!(
            e.to_string().contains("no RS256 key with kid \"rsa-9\""),
            "{e}"
        );
        // Two RSA keys and no kid: ambiguous.
        let no_kid = sign(Algorithm::RS256, None, &rsa1, &c);
        assert_eq!(
            err(&auth, &no_kid),
            AuthError::UnknownKey {
                kid: None,
                alg: "RS256"
            }
        );
        // The EC key's kid does not make an RS256 token verify against it.
        let cross = sign(Algorithm::RS256, Some("ec-1"), &rsa1, &c);
        assert!(matches!(err(&auth, &cross), AuthError::UnknownKey { .. }));
        // One ES256 key: a token without kid finds it.
        let ec_no_kid = sign(Algorithm::ES256, None, &ec, &c);
        auth.verify(&ec_no_kid, "acme", NOW).unwrap();
    }

    #[test]
    fn expiry_and_not_before_with_leeway() {
        let auth = Authenticator::new(&config());
        let at = |extra: Value| hs256(&claims(extra));
        // exp + leeway (30 s) is the last valid second.
        assert!(auth
            .verify(&at(json!({"exp": NOW - 30})), "acme", NOW)
            .is_ok());
        let expired = at(json!({"exp": NOW - 31}));
        assert_eq!(
            err(&auth, &expired),
            AuthError::Expired {
                expired_at: NOW - 31,
                now: NOW,
                leeway_secs: 30
            }
        );
        assert!(auth
            .verify(&at(json!({"nbf": NOW + 30})), "acme", NOW)
            .is_ok());
        let early = at(json!({"nbf": NOW + 31}));
        assert_eq!(
            err(&auth, &early),
            AuthError::NotYetValid {
                not_before: NOW + 31,
                now: NOW
            }
        );
        assert_eq!(err(&auth, &at(json!({"exp": null}))), AuthError::NoExpiry);
        assert!(matches!(
            err(&auth, &at(json!({"exp": "tomorrow"}))),
            AuthError::Malformed { .. }
        ));
        // Fractional NumericDate is fine.
        assert!(auth
            .verify(&at(json!({"exp": (NOW as f64) + 0.5})), "acme", NOW)
            .is_ok());
        let p = auth.verify(&at(json!({})), "acme", NOW).unwrap();
        assert!(!p.is_expired(NOW + 630));
        assert!(p.is_expired(NOW + 631));
        assert_eq!(AuthError::NoExpiry.status(), 401);
    }

    #[test]
    fn tenant_claim_must_match_the_path() {
        let auth = Authenticator::new(&config());
        let other = hs256(&claims(json!({"tenant": "globex"})));
        let e = err(&auth, &other);
        assert_eq!(
            e,
            AuthError::WrongTenant {
                expected: "acme".into(),
                found: Some("globex".into()),
                claim: "tenant".into()
            }
        );
        assert_eq!(e.status(), 403);
        assert_eq!(e.code(), "wrong_tenant");
        // Verified for globex, it is fine there.
        assert!(auth.verify(&other, "globex", NOW).is_ok());
        for missing in [
            json!({"tenant": null}),
            json!({"tenant": 7}),
            json!({"tenant": ["acme"]}),
        ] {
            let token = hs256(&claims(missing));
            assert!(matches!(
                err(&auth, &token),
                AuthError::WrongTenant { found: None, .. }
            ));
        }
        // A configured claim name.
        let auth = with(|c| c.tenant_claim = "org".into());
        let token = hs256(&claims(json!({"org": "acme", "tenant": "globex"})));
        assert!(auth.verify(&token, "acme", NOW).is_ok());
    }

    #[test]
    fn per_tenant_secret_replaces_the_shared_one() {
        let acme_secret = "acme-only-secret-0123456789-0123456789";
        let auth = with(|c| {
            c.tenant_secrets
                .insert("acme".into(), Secret::new(acme_secret.as_bytes()).unwrap());
        });
        let c = claims(json!({}));
        let with_acme = sign(
            Algorithm::HS256,
            None,
            &EncodingKey::from_secret(acme_secret.as_bytes()),
            &c,
        );
        assert!(auth.verify(&with_acme, "acme", NOW).is_ok());
        assert_eq!(
            err(&auth, &hs256(&c)),
            AuthError::BadSignature { alg: "HS256" }
        );
        // globex has no secret of its own: the shared one, and only it.
        let globex = claims(json!({"tenant": "globex"}));
        assert!(auth.verify(&hs256(&globex), "globex", NOW).is_ok());
        let forged = sign(
            Algorithm::HS256,
            None,
            &EncodingKey::from_secret(acme_secret.as_bytes()),
            &globex,
        );
        assert!(matches!(
            auth.verify(&forged, "globex", NOW),
            Err(AuthError::BadSignature { .. })
        ));
    }

    #[test]
    fn bad_signatures_and_malformed_tokens() {
        let auth = Authenticator::new(&config());
        let good = hs256(&claims(json!({})));
        let other_secret = sign(
            Algorithm::HS256,
            None,
            &EncodingKey::from_secret(b"another-secret-0123456789-0123456789"),
            &claims(json!({})),
        );
        assert_eq!(
            err(&auth, &other_secret),
            AuthError::BadSignature { alg: "HS256" }
        );
        // Swap in a payload that claims the admin role; keep the signature.
        let admin = hs256(&claims(json!({"role": "admin"})));
        let (h, rest) = good.split_once('.').unwrap();
        let sig = rest.rsplit_once('.').unwrap().1;
        let admin_payload = admin.split('.').nth(1).unwrap();
        let tampered = format!("{h}.{admin_payload}.{sig}");
        assert_eq!(
            err(&auth, &tampered),
            AuthError::BadSignature { alg: "HS256" }
        );
        let e = err(&auth, &format!("{good}x"));
        assert!(
            matches!(
                e,
                AuthError::BadSignature { .. } | AuthError::Malformed { .. }
            ),
            "{e:?}"
        );
        for bad in [
            "abc".to_string(),
            "a.b".into(),
            "a.b.c.d.e".into(),
            format!("!!.{}", good.split_once('.').unwrap().1),
            "x".repeat(MAX_TOKEN_BYTES + 1),
        ] {
            let e = err(&auth, &bad);
            assert!(matches!(e, AuthError::Malformed { .. }), "{bad:.20}: {e:?}");
            assert_eq!(e.status(), 401);
        }
        assert!(err(&auth, "a.b.c.d.e")
            .to_string()
            .contains("encrypted (JWE)"));
        // A header with crit extensions is refused.
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","crit":["exp"]}"#);
        let (_, rest) = good.split_once('.').unwrap();
        assert!(matches!(
            err(&auth, &format!("{header}.{rest}")),
            AuthError::Malformed { .. }
        ));
        assert_eq!(err(&auth, ""), AuthError::Missing);
    }

    fn unsigned(alg: &str, claims: &Map<String, Value>, signature: &str) -> String {
        let header = URL_SAFE_NO_PAD.encode(format!(r#"{{"alg":"{alg}","typ":"JWT"}}"#));
        let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).unwrap());
        format!("{header}.{payload}.{signature}")
    }

    #[test]
    fn alg_none_is_refused() {
        let auth = Authenticator::new(&config());
        let c = claims(json!({"role": "admin"}));
        for alg in ["none", "None", "NONE", "nOnE", "", "HS512", "PS256"] {
            for signature in ["", "AAAA"] {
                let token = unsigned(alg, &c, signature);
                match err(&auth, &token) {
                    AuthError::AlgorithmNotAllowed { alg: got, allowed } => {
                        assert_eq!(got, alg);
                        assert_eq!(allowed, ["HS256"]);
                    }
                    other => panic!("{alg}: {other:?}"),
                }
            }
        }
        let msg = err(&auth, &unsigned("none", &c, "")).to_string();
        assert!(msg.contains("\"none\"") && msg.contains("HS256"), "{msg}");
    }

    #[test]
    fn algorithm_confusion_is_refused() {
        // An HS256 token "signed" with the RSA public key's PEM bytes as the
        // HMAC secret: the attack works where the token's alg picks how the
        // configured key is used.
        let pem = fixture("rsa.pub.pem");
        let c = claims(json!({"role": "admin"}));
        let forged = sign(Algorithm::HS256, None, &EncodingKey::from_secret(&pem), &c);
        let rsa_only = with(|c| {
            c.secret = None;
            c.public_keys = vec![pem_key("rsa.pub.pem")];
        });
        assert_eq!(
            err(&rsa_only, &forged),
            AuthError::AlgorithmNotAllowed {
                alg: "HS256".into(),
                allowed: vec!["RS256"]
            }
        );
        // With a shared secret as well, HS256 goes to that secret only.
        let both = with(|c| c.public_keys = vec![pem_key("rsa.pub.pem")]);
        assert_eq!(
            err(&both, &forged),
            AuthError::BadSignature { alg: "HS256" }
        );
        // And an RS256 header over an HMAC signature does not verify either.
        let mut mislabeled = forged.clone();
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"RS256","typ":"JWT"}"#);
        mislabeled.replace_range(..forged.find('.').unwrap(), &header);
        assert_eq!(
            err(&both, &mislabeled),
            AuthError::BadSignature { alg: "RS256" }
        );
    }

    #[test]
    fn rules_deny_by_default_and_specific_tables_win_over_star() {
        let envs = TableName::new("public", "environments");
        let auth = with(|c| {
            c.rules.push(rule("member", None, &["org=eq.{org}"]));
            c.rules.push(rule("viewer", Some(envs.clone()), &[]));
        });
        let member = auth
            .verify(&hs256(&claims(json!({"org": "o1"}))), "acme", NOW)
            .unwrap();
        // The tasks rule wins over "*" for tasks...
        let f = member.table_access(&tasks()).unwrap();
        assert_eq!(
            f.iter().map(ToString::to_string).collect::<Vec<_>>(),
            ["owner_id=eq.u1"]
        );
        // ...and "*" covers the rest.
        let f = member.table_access(&envs).unwrap();
        assert_eq!(
            f.iter().map(ToString::to_string).collect::<Vec<_>>(),
            ["org=eq.o1"]
        );
        let admin = auth
            .verify(&hs256(&claims(json!({"role": "admin"}))), "acme", NOW)
            .unwrap();
        assert_eq!(admin.table_access(&tasks()).unwrap(), []);
        let viewer = auth
            .verify(&hs256(&claims(json!({"role": "viewer"}))), "acme", NOW)
            .unwrap();
        assert_eq!(viewer.table_access(&envs).unwrap(), []);
        let e = viewer.table_access(&tasks()).unwrap_err();
        assert_eq!(
            e,
            AuthError::TableDenied {
                table: "public.tasks".into(),
                role: "viewer".into()
            }
        );
        assert_eq!(e.status(), 403);
        let nobody = auth
            .verify(&hs256(&claims(json!({"role": "intern"}))), "acme", NOW)
            .unwrap();
        assert!(matches!(
            nobody.table_access(&envs),
            Err(AuthError::TableDenied { .. })
        ));
        for no_role in [
            json!({"role": null}),
            json!({"role": ""}),
            json!({"role": 1}),
        ] {
            let e = err(&auth, &hs256(&claims(no_role)));
            assert_eq!(
                e,
                AuthError::NoRole {
                    claim: "role".into()
                }
            );
            assert_eq!(e.status(), 403);
        }
    }

    #[test]
    fn anonymous_requests() {
        let closed = Authenticator::new(&config());
        assert_eq!(
            closed.verify("", "acme", NOW).unwrap_err(),
            AuthError::Missing
        );
        let open = with(|c| {
            c.allow_anonymous = true;
            c.rules
                .push(rule(ANON_ROLE, Some(tasks()), &["public=eq.true"]));
            c.rules.push(rule(
                ANON_ROLE,
                Some(TableName::new("public", "mine")),
                &["owner_id=eq.{sub}"],
            ));
        });
        let anon = open.verify("", "acme", NOW).unwrap();
        assert_eq!((anon.tenant.as_str(), anon.role.as_str()), ("acme", "anon"));
        assert!(anon.claims.is_empty() && anon.expires_at.is_none());
        assert!(!anon.is_expired(u64::MAX));
        assert_eq!(
            anon.table_access(&tasks()).unwrap()[0].to_string(),
            "public=eq.true"
        );
        assert!(matches!(
            anon.table_access(&TableName::new("public", "mine")),
            Err(AuthError::ClaimMissing { .. })
        ));
        // A bad token is not downgraded to anonymous.
        assert!(matches!(
            open.verify("a.b.c", "acme", NOW),
            Err(AuthError::Malformed { .. })
        ));
    }

    fn row(owner: &str) -> RowImage {
        RowImage(vec![("owner_id".into(), Datum::Text(owner.into()))])
    }

    #[test]
    fn claim_values_cannot_widen_filters() {
        let auth = with(|c| {
            c.rules = vec![rule(
                "member",
                Some(tasks()),
                &["owner_id=eq.{sub}", "org=in.({orgs})"],
            )];
        });
        let evil_sub = r#"u1),owner_id=neq.(x"#;
        let p = auth
            .verify(
                &hs256(&claims(json!({"sub": evil_sub, "orgs": "a,b"}))),
                "acme",
                NOW,
            )
            .unwrap();
        let f = p.table_access(&tasks()).unwrap();
        assert_eq!(f.len(), 2, "a claim cannot add a filter");
        assert_eq!(f[0].op, FilterOp::Eq(evil_sub.into()));
        assert!(f[0].matches(&row(evil_sub)));
        assert!(!f[0].matches(&row("u1")) && !f[0].matches(&row("x")) && !f[0].matches(&row("u2")));
        // A string is one list item, commas and all.
        assert_eq!(f[1].op, FilterOp::In(vec!["a,b".into()]));
        // An array is one item per element; parentheses and quotes stay literal.
        let p = auth
            .verify(
                &hs256(&claims(json!({"orgs": ["a", "b)", "\"c,d\"", 7, true]}))),
                "acme",
                NOW,
            )
            .unwrap();
        let f = p.table_access(&tasks()).unwrap();
        assert_eq!(
            f[1].op,
            FilterOp::In(vec![
                "a".into(),
                "b)".into(),
                "\"c,d\"".into(),
                "7".into(),
                "true".into()
            ])
        );
        let p = auth
            .verify(&hs256(&claims(json!({"orgs": []}))), "acme", NOW)
            .unwrap();
        assert_eq!(
            p.table_access(&tasks()).unwrap()[1].op,
            FilterOp::In(vec![])
        );
    }

    #[test]
    fn missing_or_unusable_claims_deny_the_rule() {
        let auth = with(|c| {
            c.rules = vec![
                rule(
                    "member",
                    Some(tasks()),
                    &["owner_id=eq.{sub}", "org=in.({orgs})"],
                ),
                rule("member", None, &["team=eq.team-{team}"]),
            ];
        });
        for (extra, claim) in [
            (json!({"orgs": ["a"], "sub": null}), "sub"),
            (json!({"orgs": ["a"], "sub": {"id": 1}}), "sub"),
            (json!({"orgs": ["a"], "sub": ["u1", "u2"]}), "sub"),
            (json!({"orgs": null}), "orgs"),
            (json!({"orgs": [["a"]]}), "orgs"),
            (json!({"orgs": [null]}), "orgs"),
        ] {
            let p = auth
                .verify(&hs256(&claims(extra.clone())), "acme", NOW)
                .unwrap();
            let e = p.table_access(&tasks()).unwrap_err();
            assert_eq!(
                e,
                AuthError::ClaimMissing {
                    table: "public.tasks".into(),
                    role: "member".into(),
                    claim: claim.into()
                },
                "{extra}"
            );
            assert_eq!(e.status(), 403);
        }
        // The tasks rule denying does not fall back to "*".
        let p = auth
            .verify(&hs256(&claims(json!({"team": 5}))), "acme", NOW)
            .unwrap();
        assert!(p.table_access(&tasks()).is_err());
        let envs = TableName::new("public", "environments");
        assert_eq!(
            p.table_access(&envs).unwrap()[0].to_string(),
            "team=eq.team-5"
        );
    }

    #[test]
    fn filter_templates_parse_or_say_what_to_write() {
        let t = FilterTemplate::parse("owner_id=eq.{sub}").unwrap();
        assert_eq!(t.to_string(), "owner_id=eq.{sub}");
        assert_eq!(
            FilterTemplate::parse("x=is.null")
                .unwrap()
                .bind(&Map::new())
                .unwrap()
                .op,
            FilterOp::IsNull
        );
        let ns = FilterTemplate::parse("org=eq.{https://example.com/org}").unwrap();
        let c = json!({"https://example.com/org": "o1"})
            .as_object()
            .unwrap()
            .clone();
        assert_eq!(ns.bind(&c).unwrap().op, FilterOp::Eq("o1".into()));
        for (text, problem) in [
            ("{sub}=eq.1", "only in the value"),
            ("owner=eq.{sub", "unclosed '{'"),
            ("owner=eq.sub}", "'}' without '{'"),
            ("owner=eq.{}", "{} is not a claim placeholder"),
            ("owner=like.{sub}", "unknown operator"),
            ("owner", "no '='"),
        ] {
            let e = FilterTemplate::parse(text).unwrap_err();
            assert!(e.contains(problem), "{text}: {e}");
        }
    }

    #[test]
    fn keys_from_files_say_what_is_wrong() {
        let from_pem = |name: &str| VerifyingKey::from_pem(&fixture(name), Path::new(name));
        assert_eq!(from_pem("rsa.pub.pem").unwrap().alg(), KeyAlg::Rs256);
        assert_eq!(from_pem("ec.pub.pem").unwrap().alg(), KeyAlg::Es256);
        for (name, problem) in [
            ("rsa.private.pem", "holds a private key"),
            ("ec384.pub.pem", "other than P-256"),
            ("jwks.json", "is not a PEM public key"),
        ] {
            let e = from_pem(name).unwrap_err();
            assert!(e.contains(problem), "{name}: {e}");
        }
        let jwks = |text: &str| VerifyingKey::from_jwks(text.as_bytes(), Path::new("j"));
        assert!(jwks("nope").unwrap_err().contains("is not a JWKS document"));
        assert!(jwks(r#"{"keys": []}"#)
            .unwrap_err()
            .contains("no RS256 or ES256"));
        let oct = r#"{"keys": [{"kty": "oct", "kid": "h", "k": "c2VjcmV0"}]}"#;
        assert!(jwks(oct).unwrap_err().contains("no RS256 or ES256"));
        let set: Value = serde_json::from_slice(&fixture("jwks.json")).unwrap();
        let rsa = set["keys"][0].clone();
        let mut enc = rsa.clone();
        enc["use"] = "enc".into();
        let mut rs512 = rsa.clone();
        rs512["alg"] = "RS512".into();
        rs512["kid"] = "other".into();
        let skipped = json!({"keys": [enc, rs512, set["keys"][2]]}).to_string();
        let keys = jwks(&skipped).unwrap();
        assert_eq!(
            keys.iter().map(|k| k.kid().unwrap()).collect::<Vec<_>>(),
            ["ec-1"]
        );
        let twice = json!({"keys": [rsa, rsa]}).to_string();
        assert!(jwks(&twice)
            .unwrap_err()
            .contains("two keys with kid \"rsa-1\""));
        assert!(Secret::new(b"short").unwrap_err().contains("at least 32"));
    }

    #[test]
    fn secrets_never_print() {
        let config = with(|c| {
            c.tenant_secrets
                .insert("acme".into(), Secret::new(SECRET.as_bytes()).unwrap());
        });
        let shown = format!("{config:?}");
        assert!(
            !shown.contains(SECRET) && shown.contains("<redacted>"),
            "{shown}"
        );
        let p = config
            .verify(&hs256(&claims(json!({}))), "acme", NOW)
            .unwrap();
        assert!(!format!("{p:?}").contains(SECRET));
    }

    #[test]
    fn attacker_text_in_errors_is_shortened() {
        let auth = Authenticator::new(&config());
        let long = "k".repeat(500);
        let e = err(&auth, &unsigned(&long, &claims(json!({})), ""));
        assert!(e.to_string().len() < 400, "{e}");
    }

    #[test]
    fn bearer_header() {
        assert_eq!(bearer_token("Bearer abc.def.ghi"), Ok("abc.def.ghi"));
        assert_eq!(bearer_token("bearer   abc "), Ok("abc"));
        assert!(matches!(
            bearer_token("Basic dXNlcg=="),
            Err(AuthError::Malformed { .. })
        ));
        assert!(bearer_token("abc").is_err());
    }

    /// Made with the python and openssl commands in docs/configuration.md
    /// ("Minting a test token"), with exp = NOW + 600.
    #[test]
    fn tokens_minted_as_the_docs_show_verify() {
        let hs = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJ0ZW5hbnQiOiJhY21lIiwicm9sZSI6Im1lbWJlciIsInN1YiI6InUxIiwiZXhwIjoxODAwMDAwNjAwfQ.5wfgHUnSM6DnJ6bDFycAQe_uONipBRHskyjvE7jBV_o";
        let rs = "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9.eyJ0ZW5hbnQiOiJhY21lIiwicm9sZSI6Im1lbWJlciIsInN1YiI6InUxIiwiZXhwIjoxODAwMDAwNjAwfQ.UAuXtfNav8tRuyuJq4jLvJRGl6nMrx8AFcw1kbpubNEK_n27V7wBE4tsE7F0utcP2DJ2-2WGKqmHuLfacmTPY9iqJWsQ_QzYqll4ER1RN5pV5d-67Dnr7i_YiG6Ua9D6HlEC8vLbKVLKdfK7mP6R3R9UUXmhjeSOOz2kDNhm9yuFnzurOVMLzuAY3kKoTLRmOBN4AutSGvbNrmaUmbBjr9ka0RzVdEmeinDWI_kyj_WnbSBgsA7j902nYevY4VcqxV7djRw2iaSYP42AV7D7EOZuUSA1cxjML4ndAQEmYDsBFEEEKAj820d2TERbpB-4swaoKmw1Bd_IMwB9mOmclQ";
        let auth = with(|c| c.public_keys = vec![pem_key("rsa.pub.pem")]);
        for token in [hs, rs] {
            let p = auth.verify(token, "acme", NOW).unwrap();
            assert_eq!(
                p.table_access(&tasks()).unwrap()[0].to_string(),
                "owner_id=eq.u1"
            );
        }
    }

    #[test]
    fn no_keys_means_every_token_is_refused() {
        let auth = Authenticator::new(&AuthConfig::default());
        let e = err(&auth, &hs256(&claims(json!({}))));
        assert_eq!(
            e,
            AuthError::AlgorithmNotAllowed {
                alg: "HS256".into(),
                allowed: vec![]
            }
        );
        assert!(e.to_string().contains("no key for this tenant"), "{e}");
        assert_eq!(
            auth.verify("", "acme", NOW).unwrap_err(),
            AuthError::Missing
        );
    }
}
