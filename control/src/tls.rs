//! The cluster's PKI: a root CA made at `swarm init`, node certificates
//! issued on join (CN = node id, OU = its role, SAN = `apiary-node`),
//! client certificates for remote administration (CN = a name, OU =
//! `swarm-client`), join tokens carrying the CA digest, and rustls
//! configurations for mutual TLS. A client that talks to a manager checks
//! the manager role in the server's certificate, so a worker on the path
//! cannot pose as one.

use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use sha2::{Digest, Sha256};

/// Every node certificate names this; peers are told apart by CN.
pub const SERVER_NAME: &str = "apiary-node";

/// What a certificate lets its holder be, in its OU (as Swarm's
/// `swarm-manager` / `swarm-worker`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CertRole {
    Manager,
    Worker,
    /// Remote administration (`apiary swarm ca issue-client`): the
    /// user-facing API only, never a Raft or node endpoint.
    Client,
}

impl CertRole {
    pub fn ou(self) -> &'static str {
        match self {
            CertRole::Manager => "swarm-manager",
            CertRole::Worker => "swarm-worker",
            CertRole::Client => "swarm-client",
        }
    }

    fn from_ou(ou: &str) -> Option<Self> {
        [CertRole::Manager, CertRole::Worker, CertRole::Client]
            .into_iter()
            .find(|r| r.ou() == ou)
    }
}

impl From<crate::model::Role> for CertRole {
    fn from(r: crate::model::Role) -> Self {
        match r {
            crate::model::Role::Manager => CertRole::Manager,
            crate::model::Role::Worker => CertRole::Worker,
        }
    }
}

/// Who a peer's certificate says it is.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum PeerCert {
    Node { id: u64, role: CertRole },
    Client { name: String },
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("certificate: {0}")]
    Cert(#[from] rcgen::Error),
    #[error("TLS setup: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("reading PEM: {0}")]
    Pem(String),
    #[error("client verifier: {0}")]
    Verifier(String),
}

#[derive(Clone, Debug)]
pub struct Identity {
    pub node_id: u64,
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

pub fn random_hex(bytes: usize) -> String {
    let mut b = vec![0u8; bytes];
    getrandom::fill(&mut b).expect("the kernel's random source");
    b.iter().map(|x| format!("{x:02x}")).collect()
}

pub fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).expect("the kernel's random source");
    // Zero means "no node" in places; never hand it out.
    u64::from_le_bytes(b).max(1)
}

/// Self-signed root CA: (certificate PEM, key PEM).
pub fn new_ca(cluster_id: &str) -> Result<(String, String), TlsError> {
    let key = KeyPair::generate()?;
    let mut p = CertificateParams::default();
    p.distinguished_name
        .push(DnType::CommonName, format!("apiary-root-ca {cluster_id}"));
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    p.not_before = time::OffsetDateTime::now_utc() - time::Duration::hours(1);
    p.not_after = time::OffsetDateTime::now_utc() + time::Duration::days(20 * 365);
    let cert = p.self_signed(&key)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// The digest a join token pins: SHA-256 of the CA certificate (DER), hex.
pub fn ca_digest(ca_pem: &str) -> Result<String, TlsError> {
    let der = CertificateDer::from_pem_slice(ca_pem.as_bytes())
        .map_err(|e| TlsError::Pem(format!("CA certificate: {e}")))?;
    Ok(Sha256::digest(der.as_ref())
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect())
}

/// A fresh node key and a CSR for it: (key PEM, CSR PEM).
pub fn new_key_and_csr() -> Result<(String, String), TlsError> {
    let key = KeyPair::generate()?;
    let csr = CertificateParams::default().serialize_request(&key)?;
    Ok((key.serialize_pem(), csr.pem()?))
}

/// Where clients reach a node: its address (`IP` or `IP:PORT`) and
/// hostname, as the manager's state has them.
#[derive(Clone, Copy, Debug)]
pub struct Dialled<'a> {
    pub addr: &'a str,
    pub hostname: &'a str,
}

impl Dialled<'_> {
    /// The subject alternative names a manager's certificate carries so
    /// that `docker --tlsverify -H tcp://IP:PORT` (or the hostname)
    /// verifies it: the address, and the hostname when it is a DNS name.
    /// A worker's names only [`SERVER_NAME`]: nobody dials a worker, and a
    /// worker's claims about its address must not become a name others
    /// trust.
    fn sans(&self) -> Vec<SanType> {
        let ip = self
            .addr
            .parse::<std::net::SocketAddr>()
            .map(|a| a.ip())
            .or_else(|_| self.addr.parse::<std::net::IpAddr>());
        let mut out = Vec::new();
        if let Ok(ip) = ip {
            if !ip.is_unspecified() {
                out.push(SanType::IpAddress(ip));
            }
        }
        if is_dns_name(self.hostname) {
            if let Ok(name) = self.hostname.try_into() {
                out.push(SanType::DnsName(name));
            }
        }
        out
    }
}

/// A hostname usable as a certificate's DNS name: labels of letters,
/// digits and inner hyphens, 253 bytes at most, not all digits and dots
/// (that would read as an address).
fn is_dns_name(h: &str) -> bool {
    let label = |l: &str| {
        (1..=63).contains(&l.len())
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    h.len() <= 253 && h.split('.').all(label) && !h.bytes().all(|b| b.is_ascii_digit() || b == b'.')
}

/// Signs a node certificate for the CSR's key. The subject (id and role)
/// and a manager's names come from the manager's state, never from the
/// CSR.
pub fn sign_node(
    ca_cert_pem: &str,
    ca_key_pem: &str,
    csr_pem: &str,
    node_id: u64,
    role: crate::model::Role,
    dialled: Dialled<'_>,
    validity_s: u64,
) -> Result<String, TlsError> {
    let names = match role {
        crate::model::Role::Manager => dialled.sans(),
        crate::model::Role::Worker => Vec::new(),
    };
    sign(
        ca_cert_pem,
        ca_key_pem,
        csr_pem,
        &crate::model::show_id(node_id),
        role.into(),
        names,
        validity_s,
    )
}

/// Longest a client name may be (it is the certificate's CN).
pub const MAX_CLIENT_NAME: usize = 64;

/// Client names: what `swarm ca issue-client NAME` accepts. Never 16 hex
/// digits, so a client is never mistaken for a node.
pub fn valid_client_name(name: &str) -> Result<(), String> {
    let ok = (1..=MAX_CLIENT_NAME).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.@".contains(&b))
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && !(name.len() == 16 && name.bytes().all(|b| b.is_ascii_hexdigit()));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid client name {name:?}: use 1 to {MAX_CLIENT_NAME} letters, digits, '-', '_', '.' or '@', starting with a letter or digit (and not 16 hex digits, which name nodes)"
        ))
    }
}

/// Signs a client certificate (remote administration) for the CSR's key.
pub fn sign_client(
    ca_cert_pem: &str,
    ca_key_pem: &str,
    csr_pem: &str,
    name: &str,
    validity_s: u64,
) -> Result<String, TlsError> {
    valid_client_name(name).map_err(TlsError::Pem)?;
    sign(
        ca_cert_pem,
        ca_key_pem,
        csr_pem,
        name,
        CertRole::Client,
        Vec::new(),
        validity_s,
    )
}

fn sign(
    ca_cert_pem: &str,
    ca_key_pem: &str,
    csr_pem: &str,
    cn: &str,
    role: CertRole,
    names: Vec<SanType>,
    validity_s: u64,
) -> Result<String, TlsError> {
    let ca_key = KeyPair::from_pem(ca_key_pem)?;
    let issuer = Issuer::from_ca_cert_pem(ca_cert_pem, ca_key)?;
    let mut csr = CertificateSigningRequestParams::from_pem(csr_pem)?;
    let mut p = CertificateParams::default();
    p.distinguished_name.push(DnType::CommonName, cn);
    p.distinguished_name
        .push(DnType::OrganizationalUnitName, role.ou());
    if role == CertRole::Client {
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    } else {
        p.subject_alt_names = vec![SanType::DnsName(SERVER_NAME.try_into()?)];
        p.subject_alt_names.extend(names);
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
    }
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.not_before = time::OffsetDateTime::now_utc() - time::Duration::minutes(5);
    p.not_after = time::OffsetDateTime::now_utc() + time::Duration::seconds(validity_s as i64);
    p.serial_number = Some(rcgen::SerialNumber::from_slice(&random_u64().to_be_bytes()));
    csr.params = p;
    Ok(csr.signed_by(&issuer)?.pem())
}

/// Who a (CA-verified) peer certificate names: a node by its id (CN, 16
/// hex digits) and role (OU), or a client by name. A certificate with
/// neither role nor a valid subject names nobody.
pub fn peer_cert(cert: &CertificateDer<'_>) -> Option<PeerCert> {
    let (_, x) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let cn = x.subject().iter_common_name().next()?.as_str().ok()?;
    let mut ous = x.subject().iter_organizational_unit();
    let role = CertRole::from_ou(ous.next()?.as_str().ok()?)?;
    if ous.next().is_some() {
        return None;
    }
    match role {
        CertRole::Client => {
            valid_client_name(cn).ok()?;
            Some(PeerCert::Client {
                name: cn.to_string(),
            })
        }
        _ if cn.len() == 16 => Some(PeerCert::Node {
            id: u64::from_str_radix(cn, 16).ok()?,
            role,
        }),
        _ => None,
    }
}

/// The role in a PEM certificate (this node's own).
pub fn cert_role(cert_pem: &str) -> Result<CertRole, TlsError> {
    let der = CertificateDer::from_pem_slice(cert_pem.as_bytes())
        .map_err(|e| TlsError::Pem(format!("node certificate: {e}")))?;
    match peer_cert(&der) {
        Some(PeerCert::Node { role, .. }) => Ok(role),
        Some(PeerCert::Client { .. }) => Ok(CertRole::Client),
        None => Err(TlsError::Pem(
            "the certificate names no role (issued before roles were): leave the swarm and join again".into(),
        )),
    }
}

/// Whether a PEM certificate names an address (an IP SAN): a manager's
/// issued before managers' certificates named theirs does not, and is
/// renewed for it.
pub fn names_an_address(cert_pem: &str) -> bool {
    let Ok(der) = CertificateDer::from_pem_slice(cert_pem.as_bytes()) else {
        return false;
    };
    let Ok((_, x)) = x509_parser::parse_x509_certificate(der.as_ref()) else {
        return false;
    };
    x.subject_alternative_name()
        .ok()
        .flatten()
        .is_some_and(|san| {
            san.value
                .general_names
                .iter()
                .any(|n| matches!(n, x509_parser::extensions::GeneralName::IPAddress(_)))
        })
}

/// Seconds since the epoch when the certificate stops being valid.
pub fn not_after(cert_pem: &str) -> Result<i64, TlsError> {
    let der = CertificateDer::from_pem_slice(cert_pem.as_bytes())
        .map_err(|e| TlsError::Pem(format!("node certificate: {e}")))?;
    let (_, x) = x509_parser::parse_x509_certificate(der.as_ref())
        .map_err(|e| TlsError::Pem(format!("node certificate: {e}")))?;
    Ok(x.validity().not_after.timestamp())
}

fn certs(pem: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem(e.to_string()))
}

fn roots(ca_pem: &str) -> Result<RootCertStore, TlsError> {
    let mut r = RootCertStore::empty();
    for c in certs(ca_pem)? {
        r.add(c)?;
    }
    Ok(r)
}

fn key(pem: &str) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|e| TlsError::Pem(e.to_string()))
}

/// The node's server side: presents its certificate, asks peers for theirs.
/// A peer without one gets only the join endpoints (checked per request).
pub fn server_config(id: &Identity) -> Result<Arc<ServerConfig>, TlsError> {
    let verifier = rustls::server::WebPkiClientVerifier::builder(Arc::new(roots(&id.ca_pem)?))
        .allow_unauthenticated()
        .build()
        .map_err(|e| TlsError::Verifier(e.to_string()))?;
    let mut c = ServerConfig::builder()
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs(&id.cert_pem)?, key(&id.key_pem)?)?;
    c.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(c))
}

/// Whom a client expects at the other end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    /// A manager: sessions, forwarding, Raft, joins, renewals, remote CLIs.
    Manager,
    /// Any node of the swarm (a manager asking a worker for task logs).
    AnyNode,
}

/// Daemon-to-daemon and CLI-to-manager: verify the server against the
/// cluster CA (and its role, see [`Expect`]) and present our own
/// certificate.
pub fn client_config(id: &Identity, expect: Expect) -> Result<Arc<ClientConfig>, TlsError> {
    let c = ClientConfig::builder()
        .dangerous()
        .with_custom_certificate_verifier(RoleVerifier::new(&id.ca_pem, expect)?)
        .with_client_auth_cert(certs(&id.cert_pem)?, key(&id.key_pem)?)?;
    Ok(Arc::new(c))
}

/// Joining: trust the CA whose digest the token carries and only a
/// manager's certificate; no client certificate yet.
pub fn join_config(ca_pem: &str) -> Result<Arc<ClientConfig>, TlsError> {
    let c = ClientConfig::builder()
        .dangerous()
        .with_custom_certificate_verifier(RoleVerifier::new(ca_pem, Expect::Manager)?)
        .with_no_client_auth();
    Ok(Arc::new(c))
}

/// The CA's verification (chain, time, name `apiary-node`), then the role.
#[derive(Debug)]
struct RoleVerifier {
    inner: Arc<rustls::client::WebPkiServerVerifier>,
    expect: Expect,
}

impl RoleVerifier {
    fn new(ca_pem: &str, expect: Expect) -> Result<Arc<Self>, TlsError> {
        let inner = rustls::client::WebPkiServerVerifier::builder(Arc::new(roots(ca_pem)?))
            .build()
            .map_err(|e| TlsError::Verifier(e.to_string()))?;
        Ok(Arc::new(Self { inner, expect }))
    }
}

impl ServerCertVerifier for RoleVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )?;
        let role = match peer_cert(end_entity) {
            Some(PeerCert::Node { role, .. }) => role,
            _ => {
                return Err(rustls::Error::General(
                    "the server's certificate names no node of this swarm".into(),
                ))
            }
        };
        match (self.expect, role) {
            (Expect::Manager, CertRole::Manager) | (Expect::AnyNode, CertRole::Manager | CertRole::Worker) => {
                Ok(ServerCertVerified::assertion())
            }
            _ => Err(rustls::Error::General(format!(
                "the server's certificate is a {} certificate, not a manager's: it cannot answer for the swarm",
                role.ou()
            ))),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Only for fetching the CA certificate before a join: the certificate is
/// checked against the token's digest afterwards, so the channel need not be.
pub fn fetch_ca_config() -> Arc<ClientConfig> {
    let provider = rustls::crypto::CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()));
    let c = ClientConfig::builder()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer(provider)))
        .with_no_client_auth();
    Arc::new(c)
}

#[derive(Debug)]
struct AnyServer(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Whether two secrets are equal, in a time that depends only on their
/// lengths (a join secret is checked on an anonymous endpoint).
pub fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// `APIARY-1-<CA digest>-<secret>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    pub ca_digest: String,
    pub secret: String,
}

impl Token {
    pub fn render(&self) -> String {
        format!("APIARY-1-{}-{}", self.ca_digest, self.secret)
    }

    pub fn parse(s: &str) -> Result<Self, String> {
        let bad = || {
            format!(
                "invalid join token {:?}: expected APIARY-1-<64 hex digits>-<secret> as printed by `apiary swarm join-token`",
                shorten(s)
            )
        };
        let rest = s.trim().strip_prefix("APIARY-1-").ok_or_else(bad)?;
        let (digest, secret) = rest.split_once('-').ok_or_else(bad)?;
        if digest.len() != 64 || !digest.bytes().all(|b| b.is_ascii_hexdigit()) || secret.is_empty()
        {
            return Err(bad());
        }
        Ok(Self {
            ca_digest: digest.to_ascii_lowercase(),
            secret: secret.to_string(),
        })
    }
}

fn shorten(s: &str) -> String {
    if s.len() > 24 {
        format!("{}…", &s[..s.floor_char_boundary(24)])
    } else {
        s.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_round_trip_and_garbage() {
        let t = Token {
            ca_digest: "ab".repeat(32),
            secret: "s3cr3t".into(),
        };
        assert_eq!(Token::parse(&t.render()).unwrap(), t);
        assert!(Token::parse("SWMTKN-1-xyz")
            .unwrap_err()
            .contains("invalid join token"));
        assert!(Token::parse("APIARY-1-abc-def").is_err());
    }

    /// The subject alternative names of a PEM certificate, as text.
    fn sans(cert: &str) -> Vec<String> {
        let der = CertificateDer::from_pem_slice(cert.as_bytes()).unwrap();
        let (_, x) = x509_parser::parse_x509_certificate(der.as_ref()).unwrap();
        x.subject_alternative_name()
            .unwrap()
            .map(|e| {
                e.value
                    .general_names
                    .iter()
                    .map(|n| match n {
                        x509_parser::extensions::GeneralName::DNSName(d) => d.to_string(),
                        x509_parser::extensions::GeneralName::IPAddress(b) => {
                            let o: [u8; 4] = (*b).try_into().unwrap();
                            std::net::Ipv4Addr::from(o).to_string()
                        }
                        other => format!("{other:?}"),
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    #[test]
    fn a_managers_certificate_names_its_address_and_hostname_and_a_workers_does_not() {
        let (ca, ca_key) = new_ca("c1").unwrap();
        let sign = |role, addr, hostname| {
            let (_, csr) = new_key_and_csr().unwrap();
            let d = Dialled { addr, hostname };
            sans(&sign_node(&ca, &ca_key, &csr, 1, role, d, 3600).unwrap())
        };
        use crate::model::Role::{Manager, Worker};
        assert_eq!(
            sign(Manager, "192.0.2.7:2377", "m1.example"),
            ["apiary-node", "192.0.2.7", "m1.example"]
        );
        assert_eq!(
            sign(Manager, "192.0.2.8", "m2"),
            ["apiary-node", "192.0.2.8", "m2"]
        );
        assert_eq!(sign(Worker, "192.0.2.9:2377", "w1"), ["apiary-node"]);
        let (_, csr) = new_key_and_csr().unwrap();
        let d = Dialled {
            addr: "192.0.2.7:2377",
            hostname: "m1",
        };
        let pem = sign_node(&ca, &ca_key, &csr, 1, Manager, d, 3600).unwrap();
        assert!(names_an_address(&pem));
        let (_, csr) = new_key_and_csr().unwrap();
        let w = sign_node(&ca, &ca_key, &csr, 2, Worker, d, 3600).unwrap();
        assert!(!names_an_address(&w));
        // A hostname that is no DNS name (a wildcard, an address, empty
        // labels, a control character) is left out; so is 0.0.0.0.
        for bad in ["*.example", "10.0.0.1", "a..b", "-a", "a\nb", "é", ""] {
            assert_eq!(
                sign(Manager, "0.0.0.0:2377", bad),
                ["apiary-node"],
                "{bad:?}"
            );
        }
    }

    #[test]
    fn issued_certificate_names_the_node_and_chains_to_the_ca() {
        let (ca, ca_key) = new_ca("c1").unwrap();
        let (key, csr) = new_key_and_csr().unwrap();
        let cert = sign_node(
            &ca,
            &ca_key,
            &csr,
            0xfeed,
            crate::model::Role::Worker,
            Dialled {
                addr: "192.0.2.7:2377",
                hostname: "w1",
            },
            3600,
        )
        .unwrap();
        let der = CertificateDer::from_pem_slice(cert.as_bytes()).unwrap();
        assert_eq!(
            peer_cert(&der),
            Some(PeerCert::Node {
                id: 0xfeed,
                role: CertRole::Worker
            })
        );
        assert_eq!(cert_role(&cert).unwrap(), CertRole::Worker);
        let id = Identity {
            node_id: 0xfeed,
            ca_pem: ca.clone(),
            cert_pem: cert.clone(),
            key_pem: key,
        };
        server_config(&id).unwrap();
        client_config(&id, Expect::Manager).unwrap();
        let left = not_after(&cert).unwrap() - time::OffsetDateTime::now_utc().unix_timestamp();
        assert!((3500..=3600).contains(&left), "{left}");
        assert_eq!(ca_digest(&ca).unwrap().len(), 64);
    }
}
