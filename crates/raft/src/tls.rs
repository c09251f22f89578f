//! TLS for the client and peer listeners, configured like etcd's certificate flags (`--cert-file`,
//! `--key-file`, `--trusted-ca-file`, `--client-cert-auth`, and their `--peer-` twins). Off unless configured.

use std::path::{Path, PathBuf};

use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

/// The certificate files of one listener (clients or peers).
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct TlsFiles {
    /// PEM certificate (chain) this node presents.
    pub cert_file: PathBuf,
    /// PEM private key of that certificate.
    pub key_file: PathBuf,
    /// PEM CA bundle that signs the other side's certificates: required for `client_cert_auth`; for peers, also
    /// what this node trusts when it connects to other members.
    pub trusted_ca_file: Option<PathBuf>,
    /// Require the connecting side to present a certificate signed by `trusted_ca_file` (mutual TLS). Default
    /// false, as in etcd; set it for peers.
    pub client_cert_auth: bool,
}

/// A TLS file could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read TLS file {path}: {message}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        message: String,
    },
    /// Client certificate authentication without a CA to check certificates against.
    #[error(
        "client certificate authentication needs a trusted CA file (--trusted-ca-file / --peer-trusted-ca-file)"
    )]
    MissingCa,
    /// The TLS stack refused the configuration (for example, a key that does not match its certificate).
    #[error("TLS configuration rejected: {message}")]
    Rejected {
        /// The reason given.
        message: String,
    },
    /// The peer listener has TLS but peer URLs are not https://, or the other way round.
    #[error("peer URL {url} must use {expected}:// to match the peer TLS setting")]
    Scheme {
        /// The URL.
        url: String,
        /// The scheme it must use.
        expected: &'static str,
    },
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| TlsError::Read {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

impl TlsFiles {
    /// TLS with this certificate and key, no client certificate check.
    pub fn new(cert_file: impl Into<PathBuf>, key_file: impl Into<PathBuf>) -> Self {
        Self {
            cert_file: cert_file.into(),
            key_file: key_file.into(),
            trusted_ca_file: None,
            client_cert_auth: false,
        }
    }

    /// Mutual TLS: also require certificates signed by `ca_file` from the connecting side.
    pub fn with_client_cert_auth(mut self, ca_file: impl Into<PathBuf>) -> Self {
        self.trusted_ca_file = Some(ca_file.into());
        self.client_cert_auth = true;
        self
    }

    /// Checks that the files can be read and the combination makes sense.
    pub fn validate(&self) -> Result<(), TlsError> {
        if self.client_cert_auth && self.trusted_ca_file.is_none() {
            return Err(TlsError::MissingCa);
        }
        read(&self.cert_file)?;
        read(&self.key_file)?;
        if let Some(ca) = &self.trusted_ca_file {
            read(ca)?;
        }
        Ok(())
    }

    fn identity(&self) -> Result<Identity, TlsError> {
        Ok(Identity::from_pem(read(&self.cert_file)?, read(&self.key_file)?))
    }

    /// The server side of this listener.
    pub fn server_config(&self) -> Result<ServerTlsConfig, TlsError> {
        let mut config = ServerTlsConfig::new().identity(self.identity()?);
        if self.client_cert_auth {
            let ca = self.trusted_ca_file.as_ref().ok_or(TlsError::MissingCa)?;
            config = config.client_ca_root(Certificate::from_pem(read(ca)?));
        }
        Ok(config)
    }

    /// How this node connects to its peers: it trusts `trusted_ca_file` and presents its own certificate, so
    /// peers with client certificate authentication accept it.
    pub fn peer_client_config(&self) -> Result<ClientTlsConfig, TlsError> {
        let mut config = ClientTlsConfig::new().identity(self.identity()?);
        if let Some(ca) = &self.trusted_ca_file {
            config = config.ca_certificate(Certificate::from_pem(read(ca)?));
        }
        Ok(config)
    }
}
