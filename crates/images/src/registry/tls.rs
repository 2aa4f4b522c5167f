//! Transport settings per registry.
//!
//! HTTPS with the system roots by default, plus CA certificates (`*.crt`)
//! and a client certificate (`client.cert` + `client.key`) from, in order,
//! `/etc/vessel/certs.d/<host[:port]>/`, `/etc/docker/certs.d/<host[:port]>/`
//! and `$VESSEL_HOME/certs.d/<host[:port]>/`.
//!
//! A registry is *insecure* when it is on loopback (`localhost`,
//! `127.0.0.0/8`, `::1`), listed in `$VESSEL_HOME/registries.json`
//! (`{"insecure": ["host:port", "host"]}`), or the request says
//! `tls_verify=false`. Like Docker, an insecure registry is tried over HTTPS
//! without certificate verification first, then over plain HTTP.

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use std::fs::File;
use std::io::BufReader;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use vessel_api::paths::Home;

use super::RegistryError;

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The host part of `host[:port]` (brackets of an IPv6 literal removed).
pub fn host_part(domain: &str) -> &str {
    if let Some(rest) = domain.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match domain.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') && p.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => domain,
    }
}

/// Is `domain` (`host[:port]`) a loopback registry?
pub fn is_loopback(domain: &str) -> bool {
    let h = host_part(domain);
    if h.eq_ignore_ascii_case("localhost") || h.to_ascii_lowercase().ends_with(".localhost") {
        return true;
    }
    h.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[derive(serde::Deserialize, Default)]
struct RegistriesFile {
    #[serde(default)]
    insecure: Vec<String>,
}

/// Is `domain` listed as insecure in `registries.json` (an entry without a
/// port covers every port of that host)?
pub fn listed_insecure(home: &Home, domain: &str) -> bool {
    let Ok(data) = std::fs::read(home.registries_file()) else {
        return false;
    };
    let Ok(f) = serde_json::from_slice::<RegistriesFile>(&data) else {
        eprintln!(
            "vessel-images: ignoring malformed {}",
            home.registries_file().display()
        );
        return false;
    };
    f.insecure
        .iter()
        .any(|e| e.eq_ignore_ascii_case(domain) || e.eq_ignore_ascii_case(host_part(domain)))
}

/// Should `domain` get unverified HTTPS with a plain HTTP fallback?
pub fn is_insecure(home: &Home, domain: &str, tls_verify: bool) -> bool {
    !tls_verify || is_loopback(domain) || listed_insecure(home, domain)
}

/// The `certs.d` directories consulted for `domain`, in order.
pub fn cert_dirs(home: &Home, domain: &str) -> Vec<PathBuf> {
    vec![
        Path::new("/etc/vessel/certs.d").join(domain),
        Path::new("/etc/docker/certs.d").join(domain),
        home.certs_dir().join(domain),
    ]
}

fn system_roots() -> &'static [CertificateDer<'static>] {
    static ROOTS: OnceLock<Vec<CertificateDer<'static>>> = OnceLock::new();
    ROOTS.get_or_init(|| match rustls_native_certs::load_native_certs() {
        Ok(certs) => certs,
        Err(e) => {
            eprintln!("vessel-images: cannot load the system CA certificates: {e}");
            Vec::new()
        }
    })
}

fn tls_error(domain: &str, message: String) -> RegistryError {
    RegistryError::Connect {
        host: domain.to_string(),
        message,
    }
}

fn read_pem_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, RegistryError> {
    let f = File::open(path).map_err(super::io_err(path))?;
    rustls_pemfile::certs(&mut BufReader::new(f))
        .collect::<Result<Vec<_>, _>>()
        .map_err(super::io_err(path))
}

/// A verifying TLS configuration for `domain`.
pub fn verifying_config(home: &Home, domain: &str) -> Result<Arc<ClientConfig>, RegistryError> {
    let mut roots = RootCertStore::empty();
    roots.add_parsable_certificates(system_roots().iter().cloned());
    let mut client_auth = None;
    for dir in cert_dirs(home, domain) {
        let Ok(rd) = std::fs::read_dir(&dir) else {
            continue;
        };
        let mut names: Vec<PathBuf> = rd.flatten().map(|e| e.path()).collect();
        names.sort();
        for p in names {
            if p.extension().is_some_and(|e| e == "crt") {
                for cert in read_pem_certs(&p)? {
                    roots.add(cert).map_err(|e| {
                        tls_error(domain, format!("bad CA certificate {}: {e}", p.display()))
                    })?;
                }
            }
        }
        let (cert, key) = (dir.join("client.cert"), dir.join("client.key"));
        if cert.is_file() && key.is_file() {
            let chain = read_pem_certs(&cert)?;
            let f = File::open(&key).map_err(super::io_err(&key))?;
            let k = rustls_pemfile::private_key(&mut BufReader::new(f))
                .map_err(super::io_err(&key))?
                .ok_or_else(|| tls_error(domain, format!("no private key in {}", key.display())))?;
            client_auth = Some((chain, k));
        }
    }
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_error(domain, e.to_string()))?
        .with_root_certificates(roots);
    let config = match client_auth {
        Some((chain, key)) => builder
            .with_client_auth_cert(chain, key)
            .map_err(|e| tls_error(domain, format!("bad client certificate: {e}")))?,
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// A TLS configuration that accepts any server certificate (insecure
/// registries only).
pub fn unverified_config() -> Result<Arc<ClientConfig>, RegistryError> {
    let p = provider();
    let config = ClientConfig::builder_with_provider(p.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_error("-", e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAny(p)))
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Accepts every certificate but still checks handshake signatures.
#[derive(Debug)]
struct AcceptAny(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAny {
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

/// The proxy for `scheme` (`https`/`http`) requests to `domain`, from
/// `HTTPS_PROXY`/`HTTP_PROXY` (or lowercase), unless `domain` is loopback or
/// matched by `NO_PROXY`.
pub fn proxy_for(domain: &str, scheme: &str) -> Option<String> {
    let var = |names: &[&str]| {
        names
            .iter()
            .find_map(|n| std::env::var(n).ok().filter(|v| !v.trim().is_empty()))
    };
    let proxy = if scheme == "https" {
        var(&["HTTPS_PROXY", "https_proxy"])
    } else {
        var(&["HTTP_PROXY", "http_proxy"])
    }?;
    let no_proxy = var(&["NO_PROXY", "no_proxy"]).unwrap_or_default();
    if is_loopback(domain) || no_proxy_matches(&no_proxy, domain) {
        return None;
    }
    Some(proxy)
}

/// Does a `NO_PROXY` list (`host`, `.suffix`, `host:port`, `*`) cover `domain`?
pub fn no_proxy_matches(list: &str, domain: &str) -> bool {
    let host = host_part(domain).to_ascii_lowercase();
    list.split(',')
        .map(|e| e.trim().to_ascii_lowercase())
        .filter(|e| !e.is_empty())
        .any(|e| {
            if e == "*" || e.eq_ignore_ascii_case(domain) {
                return true;
            }
            let e = host_part(&e).to_string();
            let suffix = e.trim_start_matches("*.").trim_start_matches('.');
            host == suffix || host.ends_with(&format!(".{suffix}"))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_proxy_lists() {
        let l = "localhost, .corp.example,registry.example:5000,10.1.2.3";
        assert!(no_proxy_matches(l, "a.corp.example"));
        assert!(no_proxy_matches(l, "corp.example:443"));
        assert!(no_proxy_matches(l, "registry.example:5000"));
        assert!(no_proxy_matches(l, "10.1.2.3:5000"));
        assert!(!no_proxy_matches(l, "docker.io"));
        assert!(!no_proxy_matches(l, "xcorp.example"));
        assert!(no_proxy_matches("*", "docker.io"));
        assert!(!no_proxy_matches("", "docker.io"));
    }

    #[test]
    fn loopback_and_insecure_hosts() {
        for h in [
            "localhost",
            "localhost:5000",
            "127.0.0.1:5000",
            "127.1.2.3",
            "[::1]:5000",
            "::1",
        ] {
            assert!(is_loopback(h), "{h}");
        }
        for h in ["docker.io", "10.0.0.1:5000", "localhostx:5000", "ghcr.io"] {
            assert!(!is_loopback(h), "{h}");
        }
        assert_eq!(host_part("[::1]:5000"), "::1");
        assert_eq!(host_part("reg.example:443"), "reg.example");

        let dir = tempfile::tempdir().unwrap();
        let home = Home::new(dir.path());
        assert!(!is_insecure(&home, "reg.example:5000", true));
        assert!(is_insecure(&home, "reg.example:5000", false));
        std::fs::write(
            home.registries_file(),
            r#"{"insecure": ["reg.example:5000", "other.example"]}"#,
        )
        .unwrap();
        assert!(is_insecure(&home, "reg.example:5000", true));
        assert!(!is_insecure(&home, "reg.example:5001", true));
        assert!(is_insecure(&home, "other.example:1234", true));
        std::fs::write(home.registries_file(), "not json").unwrap();
        assert!(!is_insecure(&home, "reg.example:5000", true));
    }

    #[test]
    fn configs_build() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::new(dir.path());
        verifying_config(&home, "reg.example").unwrap();
        unverified_config().unwrap();
        // A malformed CA file is an error naming the file.
        let d = home.certs_dir().join("reg.example");
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(
            d.join("ca.crt"),
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let e = verifying_config(&home, "reg.example").unwrap_err();
        assert!(e.to_string().contains("ca.crt"), "{e}");
    }
}
