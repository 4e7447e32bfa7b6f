//! CFSSL's `/api/v1/cfssl/sign` protocol as SwarmKit speaks it: the request body, and what an
//! answer means (docs/behaviour.md §5.2, §5.3).

use serde::{Deserialize, Serialize};
use swarmca_core::role::{Role, CA_ROLE};

use super::error::*;

/// CFSSL's `signer.SignRequest` as SwarmKit encodes it: field order and key spelling are those
/// of Go's `encoding/json` for CFSSL v1.6.4 (docs/behaviour.md §5.2).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SignRequest {
    hosts: Vec<String>,
    certificate_request: String,
    subject: Subject,
    profile: String,
    crl_override: String,
    label: String,
    #[serde(rename = "NotBefore")]
    not_before: &'static str,
    #[serde(rename = "NotAfter")]
    not_after: &'static str,
    #[serde(rename = "ReturnPrecert")]
    return_precert: bool,
    metadata: Option<()>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    extensions: Vec<Extension>,
}

/// A certificate extension CFSSL copies into what it signs (profile whitelist permitting).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
struct Extension {
    id: String,
    critical: bool,
    /// Hex of the DER value.
    value: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
struct Subject {
    #[serde(rename = "CN")]
    cn: String,
    names: Vec<Name>,
    #[serde(rename = "SerialNumber")]
    serial_number: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
struct Name {
    #[serde(rename = "O", skip_serializing_if = "String::is_empty")]
    o: String,
    #[serde(rename = "OU", skip_serializing_if = "String::is_empty")]
    ou: String,
}

/// The CFSSL signing profile used to cross-sign a root (SwarmKit `ExternalCrossSignProfile`).
pub const CROSS_SIGN_PROFILE: &str = "CA";

/// Go's zero `time.Time` in JSON.
const GO_ZERO_TIME: &str = "0001-01-01T00:00:00Z";

impl SignRequest {
    /// The request for a node certificate (SwarmKit `PrepareCSR`): hosts `[role OU, cn]` plus
    /// `swarm-ca` for managers; subject CN = `cn`, O = `org`, OU = the role.
    pub fn node(csr_pem: &[u8], cn: &str, role: Role, org: &str) -> SignRequest {
        let mut hosts = vec![role.ou().to_string(), cn.to_string()];
        if role == Role::Manager {
            hosts.push(CA_ROLE.to_string());
        }
        SignRequest {
            hosts,
            certificate_request: String::from_utf8_lossy(csr_pem).into_owned(),
            subject: Subject {
                cn: cn.to_string(),
                names: vec![Name { o: org.to_string(), ou: role.ou().to_string() }],
                serial_number: String::new(),
            },
            profile: String::new(),
            crl_override: String::new(),
            label: String::new(),
            not_before: GO_ZERO_TIME,
            not_after: GO_ZERO_TIME,
            return_precert: false,
            metadata: None,
            extensions: Vec::new(),
        }
    }

    /// The request to cross-sign a root (SwarmKit's external `CrossSignRootCA`): profile `CA`,
    /// subject CN of the root, and its BasicConstraints passed explicitly because stock CFSSL
    /// ignores the extensions of a CSR.
    pub fn cross_sign(csr: &swarmca_core::rootca::CrossSignCsr) -> SignRequest {
        SignRequest {
            hosts: Vec::new(),
            certificate_request: String::from_utf8_lossy(&csr.csr_pem).into_owned(),
            subject: Subject { cn: csr.common_name.clone(), names: Vec::new(), serial_number: String::new() },
            profile: CROSS_SIGN_PROFILE.to_string(),
            crl_override: String::new(),
            label: String::new(),
            not_before: GO_ZERO_TIME,
            not_after: GO_ZERO_TIME,
            return_precert: false,
            metadata: None,
            extensions: csr
                .basic_constraints
                .iter()
                .map(|(critical, value)| Extension {
                    id: "2.5.29.19".into(),
                    critical: *critical,
                    value: hex::encode(value),
                })
                .collect(),
        }
    }

    /// The JSON body sent to the external CA.
    pub fn to_json(&self) -> Result<Vec<u8>, ExternalCaError> {
        serde_json::to_vec(self).map_err(|e| ExternalCaError::Encode(e.to_string()))
    }
}

/// Appends as much of `data` to `buf` as fits under [`CERTIFICATE_MAX_SIZE`].
pub fn append_capped(buf: &mut Vec<u8>, data: &[u8]) {
    let room = CERTIFICATE_MAX_SIZE.saturating_sub(buf.len());
    buf.extend_from_slice(data.get(..room.min(data.len())).unwrap_or_default());
}

#[derive(Deserialize, Default)]
struct ApiResponse {
    #[serde(default)]
    success: bool,
    #[serde(default)]
    result: Option<serde_json::Value>,
    #[serde(default)]
    errors: Option<Vec<ResponseMessage>>,
}

#[derive(Deserialize)]
struct ResponseMessage {
    #[serde(default)]
    code: i64,
    #[serde(default)]
    message: String,
}

/// Go's `%v` of CFSSL response messages: `[{code message} ...]`.
fn format_errors(errors: &[ResponseMessage]) -> String {
    let list: Vec<String> = errors.iter().map(|m| format!("{{{} {}}}", m.code, m.message)).collect();
    format!("[{}]", list.join(" "))
}

/// The formatted errors of a CFSSL error response that rejects the CSR itself, if `body` is one.
fn csr_rejection(body: &[u8]) -> Option<String> {
    let resp: ApiResponse = serde_json::from_slice(body).ok()?;
    let errors = resp.errors.unwrap_or_default();
    let csr_only = !errors.is_empty() && errors.iter().all(|m| CFSSL_CSR_ERRORS.contains(&m.code));
    (!resp.success && csr_only).then(|| format_errors(&errors))
}

/// CFSSL response handling (docs/behaviour.md §5.3 steps 3–7).
pub fn parse_response(status: u16, body: &[u8]) -> Result<Vec<u8>, ExternalCaError> {
    if status == 400 {
        if let Some(list) = csr_rejection(body) {
            return Err(ExternalCaError::Rejected(list));
        }
    }
    if status != 200 {
        let shown = body.get(..STATUS_BODY_IN_ERROR).unwrap_or(body);
        let mut text = String::from_utf8_lossy(shown).into_owned();
        if shown.len() < body.len() {
            text.push_str(&format!("... ({} bytes)", body.len()));
        }
        return Err(ExternalCaError::Status { code: status, body: text });
    }
    let resp: Option<ApiResponse> =
        serde_json::from_slice(body).map_err(|e| ExternalCaError::Json(e.to_string()))?;
    let resp = resp.unwrap_or_default();
    let result = match resp.result {
        Some(r) if resp.success && !r.is_null() => r,
        _ => {
            let errors = resp.errors.unwrap_or_default();
            if errors.is_empty() {
                return Err(ExternalCaError::Failed);
            }
            return Err(ExternalCaError::Rejected(format_errors(&errors)));
        }
    };
    let serde_json::Value::Object(map) = result else {
        return Err(ExternalCaError::InvalidResultType);
    };
    match map.get("certificate") {
        Some(serde_json::Value::String(cert)) => Ok(cert.clone().into_bytes()),
        _ => Err(ExternalCaError::InvalidCertificateField),
    }
}
