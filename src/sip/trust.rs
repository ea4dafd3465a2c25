//! Who may place a call or register: with `[[trunks]]` or `[[users]]` configured, a request
//! that opens a dialog or a registration is trusted because its source is a trunk's
//! (`inbound_from`) or because it carries digest credentials of a user; everyone else is
//! challenged (401) and a wrong answer is refused (403). Without either, the network ACL alone
//! admits (the out-of-the-box demo). Pure: the core asks, and sends what it is told.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use super::acl::{Acl, AclError};
use super::digest::{Algorithm, Check, Credentials, NonceBook};
use super::message::Request;

/// How long a nonce we issued stays good (a phone re-registers or calls well within it).
const NONCE_LIFETIME: Duration = Duration::from_secs(300);
/// Nonces remembered at once; a flood of challenges forgets the oldest first.
const NONCE_CAPACITY: usize = 20_000;

/// The trunk sources and user passwords the core checks against.
#[derive(Debug, Clone, Default)]
pub struct TrustConfig {
    /// Trunk name and its `inbound_from` blocks.
    pub trunks: Vec<(String, Acl)>,
    /// Username → password.
    pub users: HashMap<String, String>,
    /// The realm of our challenges.
    pub realm: String,
    /// One challenge per algorithm, in this order.
    pub algorithms: Vec<Algorithm>,
}

impl TrustConfig {
    /// From `[[trunks]]` and `[[users]]`; `None` when neither is configured.
    pub fn from_config(
        trunks: &[crate::config::TrunkConfig],
        users: &[crate::config::UserConfig],
        realm: &str,
        algorithms: &[Algorithm],
    ) -> Result<Option<TrustConfig>, AclError> {
        if trunks.is_empty() && users.is_empty() {
            return Ok(None);
        }
        let mut t = Vec::with_capacity(trunks.len());
        for trunk in trunks {
            t.push((trunk.name.clone(), Acl::parse(&trunk.inbound_from)?));
        }
        Ok(Some(TrustConfig {
            trunks: t,
            users: users
                .iter()
                .map(|u| (u.username.clone(), u.password.clone()))
                .collect(),
            realm: realm.to_string(),
            algorithms: if algorithms.is_empty() {
                vec![Algorithm::Md5]
            } else {
                algorithms.to_vec()
            },
        }))
    }
}

/// What to do with a request that needs trust.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Admit {
    /// From a trunk's address.
    Trunk(String),
    /// Authenticated as this user.
    User(String),
    /// Answer 401 with these `WWW-Authenticate` values (one per configured algorithm).
    Challenge(Vec<String>),
    /// Answer 403: credentials were given and are wrong (counts towards a ban).
    Refuse(&'static str),
}

pub(crate) struct Trust {
    cfg: TrustConfig,
    book: NonceBook,
}

impl Trust {
    pub fn new(cfg: TrustConfig) -> Trust {
        let book = NonceBook::new(&cfg.realm, NONCE_LIFETIME, NONCE_CAPACITY);
        Trust { cfg, book }
    }

    /// The trunk whose `inbound_from` holds `ip`.
    pub fn trunk_of(&self, ip: IpAddr) -> Option<&str> {
        self.cfg
            .trunks
            .iter()
            .find(|(_, acl)| acl.allows(ip))
            .map(|(name, _)| name.as_str())
    }

    pub fn admit(&mut self, now: Instant, ip: IpAddr, req: &Request) -> Admit {
        // A REGISTER is a user's, whatever its source.
        if req.method != "REGISTER" {
            if let Some(name) = self.trunk_of(ip) {
                return Admit::Trunk(name.to_string());
            }
        }
        let Some(value) = req.authorization.as_deref() else {
            return Admit::Challenge(self.challenges(now, false));
        };
        let Ok(creds) = Credentials::parse(value) else {
            return Admit::Refuse("malformed credentials");
        };
        if creds.realm != self.book.realm() {
            // Credentials for someone else (a proxy on the way): ours are still to be given.
            return Admit::Challenge(self.challenges(now, false));
        }
        let users = &self.cfg.users;
        match self
            .book
            .check(now, &creds, &req.method, &req.raw_uri, |u| {
                users.get(u).map(String::as_str)
            }) {
            Check::Accepted(user) => Admit::User(user),
            Check::Stale => Admit::Challenge(self.challenges(now, true)),
            Check::Refused(why) => Admit::Refuse(why),
        }
    }

    fn challenges(&mut self, now: Instant, stale: bool) -> Vec<String> {
        let algorithms = self.cfg.algorithms.clone();
        algorithms
            .into_iter()
            .map(|a| self.book.challenge(now, a, stale))
            .collect()
    }
}
