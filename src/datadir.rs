//! The data directory: what `docket init` creates and `docket serve` opens.
//!
//! ```text
//! <data>/config.json     origin, listen address, admin principal id
//! <data>/log.key         the log's Ed25519 signing key (PKCS#8 PEM, 0600)
//! <data>/log.vkey        its C2SP note verifier key (give this to auditors)
//! <data>/admin.key       the first administrator's signing key (0600)
//! <data>/admin.pub       its public key (SPKI PEM)
//! <data>/access.json     which client certificate subjects may call which RPC
//! <data>/tls/            development CA, server and client certificates
//! <data>/db/             the sled database (log and state trees)
//! ```

use std::path::{Path, PathBuf};
use std::sync::Arc;

use ed25519_dalek::SigningKey;
use serde::{Deserialize, Serialize};

use crate::api::access::AccessPolicy;
use crate::api::convert::sign_event;
use crate::crypto::{self, KeyError, NoteSigner};
use crate::event::{Body, Event, Genesis, PrincipalId, PrincipalKind, PrincipalSpec};
use crate::ledger::{SledStore, StoreError};
use crate::service::{AppendError, Config as ServiceConfig, OpenError, Service};
use crate::tls::{PkiPaths, TlsError};

/// Settings fixed at `init`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    pub origin: String,
    pub listen: String,
    pub admin: String,
}

/// Options of `docket init`.
#[derive(Clone, Debug)]
pub struct InitOptions {
    pub origin: String,
    pub listen: String,
    pub admin: String,
    pub hosts: Vec<String>,
    /// The genesis policy (TOML); `None` for the built-in default.
    pub policy: Option<String>,
    /// Further human administrators genesis names, with their public keys:
    /// with two, identity changes need both from the start
    /// (ledger-format §8.2.1).
    pub co_admins: Vec<(String, ed25519_dalek::VerifyingKey)>,
}

impl Default for InitOptions {
    fn default() -> Self {
        InitOptions {
            origin: "docket.local/log".into(),
            listen: "127.0.0.1:7443".into(),
            admin: "admin".into(),
            hosts: vec!["localhost".into(), "127.0.0.1".into(), "::1".into()],
            policy: None,
            co_admins: Vec::new(),
        }
    }
}

/// Why a data directory could not be created or opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DataDirError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Config { path: String, reason: String },
    #[error("{0} already holds a Docket log; refusing to initialise it again")]
    AlreadyInitialised(String),
    #[error("{0} is not a Docket data directory (no config.json); run `docket init`")]
    NotInitialised(String),
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("creating genesis: {0}")]
    Genesis(#[from] AppendError),
    #[error("opening the log: {0}")]
    Open(#[from] OpenError),
    #[error("admin id: {0}")]
    AdminId(String),
}

/// The subject of the client certificate `init` issues for the admin.
pub fn admin_client_identity(admin: &str) -> String {
    format!("CN=docket-{admin}")
}

/// Paths inside a data directory.
#[derive(Clone, Debug)]
pub struct DataDir {
    pub root: PathBuf,
}

impl DataDir {
    /// A data directory at `root` (which may not exist yet).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        DataDir { root: root.into() }
    }

    pub fn config_path(&self) -> PathBuf {
        self.root.join("config.json")
    }
    pub fn log_key(&self) -> PathBuf {
        self.root.join("log.key")
    }
    pub fn log_vkey(&self) -> PathBuf {
        self.root.join("log.vkey")
    }
    pub fn admin_key(&self) -> PathBuf {
        self.root.join("admin.key")
    }
    pub fn admin_pub(&self) -> PathBuf {
        self.root.join("admin.pub")
    }
    pub fn tls(&self) -> PkiPaths {
        PkiPaths::in_dir(&self.root.join("tls"))
    }
    pub fn db(&self) -> PathBuf {
        self.root.join("db")
    }
    pub fn access_path(&self) -> PathBuf {
        self.root.join("access.json")
    }

    /// The access rules: `access.json`, or for a directory made before that
    /// file existed, the admin's client certificate alone (with a warning).
    pub fn access(&self) -> Result<AccessPolicy, DataDirError> {
        let p = self.access_path();
        if p.exists() {
            return AccessPolicy::load(&p).map_err(|e| DataDirError::Config {
                path: p.display().to_string(),
                reason: e.to_string(),
            });
        }
        let cfg = self.config()?;
        let id = admin_client_identity(&cfg.admin);
        tracing::warn!(path = %p.display(), identity = %id, "no access.json; only the admin client certificate may call the API");
        Ok(AccessPolicy::allow_all(&id))
    }

    /// True when `init` has completed here.
    pub fn is_initialised(&self) -> bool {
        self.config_path().exists()
    }

    /// What to say of a directory with keys or a log but no `config.json`:
    /// an interrupted init, or a log whose configuration was lost. Never
    /// "remove it" alone: `db/` may hold a log that was served.
    pub fn missing_config(&self) -> String {
        // `log.vkey` names the origin (C2SP verifier key: `origin+hash+key`).
        let origin = std::fs::read_to_string(self.log_vkey())
            .ok()
            .and_then(|v| v.trim().split('+').next().map(str::to_owned))
            .filter(|o| !o.is_empty())
            .unwrap_or_else(|| "ORIGIN".into());
        format!(
            "config.json is missing, but keys or a log store (db/) are here. If a Docket server ran \
             here, db/ holds its log: do not remove the directory; write {} again, e.g. \
             {{\"origin\": {:?}, \"listen\": \"127.0.0.1:7443\", \"admin\": \"admin\"}} \
             (the origin is the one log.vkey names; the admin is the first administrator genesis \
             named), then check the log with `docket verify --data {}`. Only if `docket init` was \
             interrupted here, before anything was served, remove the directory and run init again",
            self.config_path().display(),
            origin,
            self.root.display()
        )
    }

    /// Reads `config.json`.
    pub fn config(&self) -> Result<DataConfig, DataDirError> {
        let p = self.config_path();
        let text = std::fs::read_to_string(&p).map_err(|source| {
            if source.kind() == std::io::ErrorKind::NotFound {
                DataDirError::NotInitialised(self.root.display().to_string())
            } else {
                DataDirError::Io {
                    path: p.display().to_string(),
                    source,
                }
            }
        })?;
        serde_json::from_str(&text).map_err(|e| DataDirError::Config {
            path: p.display().to_string(),
            reason: e.to_string(),
        })
    }

    /// Creates keys, the development PKI and the genesis entry. The config
    /// file is written last, so an interrupted init is never taken for a
    /// finished one.
    pub fn init(&self, opts: &InitOptions) -> Result<DataConfig, DataDirError> {
        if self.is_initialised() {
            return Err(DataDirError::AlreadyInitialised(
                self.root.display().to_string(),
            ));
        }
        // Check every option before the first file is written.
        crypto::check_key_name(&opts.origin).map_err(|r| DataDirError::Config {
            path: "--origin".into(),
            reason: format!("{:?} {r}", opts.origin),
        })?;
        if self.db().exists() || self.log_key().exists() {
            return Err(DataDirError::Config {
                path: self.root.display().to_string(),
                reason: self.missing_config(),
            });
        }
        let io = |path: &Path| {
            let path = path.display().to_string();
            move |source| DataDirError::Io { path, source }
        };
        let admin_id =
            PrincipalId::parse(&opts.admin).map_err(|e| DataDirError::AdminId(e.to_string()))?;
        let mut administrators_seen = vec![admin_id.clone()];
        let mut co_admins = Vec::new();
        for (id, key) in &opts.co_admins {
            let id = PrincipalId::parse(id).map_err(|e| DataDirError::Config {
                path: "--co-admin".into(),
                reason: format!("{id:?}: {e}"),
            })?;
            if administrators_seen.contains(&id) {
                return Err(DataDirError::Config {
                    path: "--co-admin".into(),
                    reason: format!("administrator {id} is named twice"),
                });
            }
            if co_admins
                .iter()
                .any(|s: &PrincipalSpec| s.keys.contains(key))
            {
                return Err(DataDirError::Config {
                    path: "--co-admin".into(),
                    reason: format!("{id}: the key is given to another administrator too"),
                });
            }
            administrators_seen.push(id.clone());
            co_admins.push(PrincipalSpec {
                id,
                kind: PrincipalKind::Human,
                display_name: String::new(),
                roles: Default::default(),
                keys: vec![*key],
                emails: Default::default(),
            });
        }
        if let Some(text) = &opts.policy {
            crate::policy::Policy::parse_new(text).map_err(|e| DataDirError::Config {
                path: "--policy".into(),
                reason: e.to_string(),
            })?;
        }
        crate::tls::check_hosts(&opts.hosts).map_err(|reason| DataDirError::Config {
            path: "--host".into(),
            reason,
        })?;
        let log_key = crypto::generate_signing_key();
        let admin_key = crypto::generate_signing_key();
        let signer = NoteSigner::new(&opts.origin, log_key.clone());
        let genesis = Event {
            event_id: format!("genesis:{}", opts.origin),
            claimed_time_nanos: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as i64)
                .unwrap_or(1),
            signer: admin_id.clone(),
            body: Body::Genesis(Genesis {
                origin: opts.origin.clone(),
                log_key: log_key.verifying_key(),
                administrators: std::iter::once(PrincipalSpec {
                    id: admin_id,
                    kind: PrincipalKind::Human,
                    display_name: "Initial administrator".into(),
                    roles: Default::default(),
                    keys: vec![admin_key.verifying_key()],
                    emails: Default::default(),
                })
                .chain(co_admins)
                .collect(),
                policy: opts.policy.clone(),
            }),
        };
        // Everything the log will check of the genesis event is checked
        // before the first file is written, so a refused init leaves
        // nothing behind to clean up.
        let genesis = sign_event(&genesis, &admin_key);
        crate::api::convert::decode_event(&genesis.payload).map_err(|e| DataDirError::Config {
            path: match e.field.as_str() {
                "genesis.policy" => "--policy".into(),
                f => f.to_owned(),
            },
            reason: e.reason,
        })?;
        std::fs::create_dir_all(&self.root).map_err(io(&self.root))?;
        crypto::write_signing_key(&self.log_key(), &log_key)?;
        crypto::write_signing_key(&self.admin_key(), &admin_key)?;
        crypto::write_public_key(&self.admin_pub(), &admin_key.verifying_key())?;
        std::fs::write(self.log_vkey(), format!("{}\n", signer.verifier().vkey()))
            .map_err(io(&self.log_vkey()))?;
        crate::tls::generate_dev_pki(
            &self.root.join("tls"),
            &opts.hosts,
            &format!("docket-{}", opts.admin),
        )?;
        let access = AccessPolicy::allow_all(&admin_client_identity(&opts.admin));
        std::fs::write(self.access_path(), access.to_json()).map_err(io(&self.access_path()))?;

        let store = Arc::new(SledStore::open(&self.db())?);
        Service::create_log(&store, signer, genesis)?;
        drop(store);
        let cfg = DataConfig {
            origin: opts.origin.clone(),
            listen: opts.listen.clone(),
            admin: opts.admin.clone(),
        };
        let text = serde_json::to_string_pretty(&cfg).expect("config serialises");
        std::fs::write(self.config_path(), text + "\n").map_err(io(&self.config_path()))?;
        Ok(cfg)
    }

    /// The log signing key and its note signer.
    pub fn note_signer(&self, cfg: &DataConfig) -> Result<NoteSigner, DataDirError> {
        let key: SigningKey = crypto::read_signing_key(&self.log_key())?;
        Ok(NoteSigner::new(&cfg.origin, key))
    }

    /// Opens the log and starts its writer.
    pub fn open_service(&self, config: ServiceConfig) -> Result<Arc<Service>, DataDirError> {
        let cfg = self.config()?;
        let signer = self.note_signer(&cfg)?;
        let store = Arc::new(SledStore::open(&self.db())?);
        Ok(Arc::new(Service::open(store, signer, config)?))
    }
}
