//! Which flow answers which number: `[[routes]]` in config, numbers attached through the
//! IncomingPhoneNumbers API (their voice and SMS URLs name flows), and the default flow for
//! everything else: `flow`/`--flow` when configured, or the bundled demo IVR while nothing is
//! routed at all. A number that nothing routes, with no default, has no flow (the call gets
//! 404, the message is dropped with a log line). Flows are validated when loaded.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, RwLock};

use sha2::{Digest, Sha256};

use crate::config::Config;
use crate::flow::Flow;
use crate::store::{Store, StoreError};

/// The bundled demo IVR (`examples/demo-ivr.json`): the flow used when none is configured.
pub const DEMO_FLOW: &str = include_str!("../examples/demo-ivr.json");

/// Why a flow could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum RoutingError {
    /// The file could not be read.
    #[error("cannot read flow {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The flow does not validate.
    #[error("flow {path} is invalid:\n{errors}")]
    Invalid {
        /// The file (or the name given to [`LoadedFlow::from_json`]).
        path: String,
        /// The validation errors, one per line.
        errors: String,
    },
}

/// A validated flow with the SID it is known by (derived from its content, so it is stable
/// across restarts and the same on every node).
pub struct LoadedFlow {
    /// The flow's SID (`FW…`).
    pub sid: String,
    /// Where it came from (a path, or a name), for log lines and errors.
    pub name: String,
    /// The compiled flow.
    pub flow: Flow,
}

impl LoadedFlow {
    /// Compile a flow from its JSON; its SID is derived from the text (`FW` + 32 hex digits of
    /// its SHA-256).
    pub fn from_json(name: &str, json: &str) -> Result<LoadedFlow, RoutingError> {
        let flow = compile(name, json)?;
        let digest = Sha256::digest(json.as_bytes());
        Ok(LoadedFlow {
            sid: format!("FW{}", &hex::encode(digest)[..32]),
            name: name.to_string(),
            flow,
        })
    }

    /// A flow known by a SID given elsewhere (flows created through the REST API).
    pub fn with_sid(sid: &str, name: &str, json: &str) -> Result<LoadedFlow, RoutingError> {
        let flow = compile(name, json)?;
        Ok(LoadedFlow {
            sid: sid.to_string(),
            name: name.to_string(),
            flow,
        })
    }

    /// Read and compile a flow file (see [`LoadedFlow::from_json`]).
    pub fn from_file(path: &Path) -> Result<LoadedFlow, RoutingError> {
        let name = path.display().to_string();
        let json = std::fs::read_to_string(path).map_err(|source| RoutingError::Read {
            path: name.clone(),
            source,
        })?;
        Self::from_json(&name, &json)
    }
}

/// Twilio Function SIDs (`ZH…`) mapped to URLs that serve them here (`[functions]` in config).
/// Set once at start-up, before flows load.
static FUNCTION_URLS: std::sync::OnceLock<HashMap<String, String>> = std::sync::OnceLock::new();

pub(crate) fn set_function_urls(map: HashMap<String, String>) {
    let _ = FUNCTION_URLS.set(map);
}

/// Compile a flow, first giving `run-function` widgets that name a mapped Function SID but no
/// `url` the configured URL (exports reference Functions by SID only).
fn compile(name: &str, json: &str) -> Result<Flow, RoutingError> {
    let invalid = |errors: String| RoutingError::Invalid {
        path: name.to_string(),
        errors,
    };
    let map = FUNCTION_URLS.get().filter(|m| !m.is_empty());
    let Some(map) = map else {
        return Flow::from_json(json).map_err(|e| invalid(e.to_string()));
    };
    let mut value: serde_json::Value =
        serde_json::from_str(json).map_err(|e| invalid(e.to_string()))?;
    if let Some(states) = value.get_mut("states").and_then(|s| s.as_array_mut()) {
        for st in states
            .iter_mut()
            .filter(|st| st.get("type").and_then(|t| t.as_str()) == Some("run-function"))
        {
            let Some(props) = st.get_mut("properties").and_then(|p| p.as_object_mut()) else {
                continue;
            };
            let has_url = props
                .get("url")
                .and_then(|u| u.as_str())
                .is_some_and(|u| !u.trim().is_empty());
            let sid = props
                .get("function_sid")
                .and_then(|u| u.as_str())
                .unwrap_or_default()
                .to_string();
            if let (false, Some(url)) = (has_url, map.get(&sid)) {
                props.insert("url".into(), serde_json::Value::String(url.clone()));
            }
        }
    }
    Flow::from_value(&value).map_err(|e| invalid(e.to_string()))
}

/// What arrives for a number: its voice and SMS URLs may name different flows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Incoming {
    /// An INVITE to the number.
    Call,
    /// An SMS to the number.
    Message,
}

/// The flows a number attached through the API names (by SID, from its URLs).
#[derive(Debug, Clone, Default, PartialEq)]
struct NumberRoute {
    voice: Option<String>,
    sms: Option<String>,
}

/// Which flow answers a number, and the flows known by SID.
pub struct Router {
    default: Arc<LoadedFlow>,
    /// The default is the bundled demo (no `flow` configured): it answers only while no
    /// number is routed.
    default_is_demo: bool,
    by_number: HashMap<String, Arc<LoadedFlow>>,
    /// `[subflows]` flow files (configured flows, by their own SIDs).
    subflow_files: Vec<Arc<LoadedFlow>>,
    /// `[subflows]`: a Twilio Flow SID a parent names → the SID of the flow that runs for it.
    subflow_alias: HashMap<String, String>,
    /// Numbers from the IncomingPhoneNumbers API, refreshed from the store.
    numbers: RwLock<HashMap<String, NumberRoute>>,
    /// One refresh at a time: a slow periodic read must not overwrite a newer one.
    refreshing: tokio::sync::Mutex<()>,
    /// Flows created through the REST API, by SID (their published revision, or their latest
    /// one while none is published); they change at run time.
    dynamic: RwLock<HashMap<String, Arc<LoadedFlow>>>,
}

impl Router {
    /// Register every flow stored through the API in the router (at start-up). A stored flow that
    /// no longer compiles is reported and skipped.
    pub async fn load_stored(&self, store: &Store) -> Result<usize, StoreError> {
        let mut n = 0;
        for sid in store.flow_sids().await? {
            match store.runnable_revision(&sid).await? {
                Some(rev) => {
                    match LoadedFlow::with_sid(&sid, &rev.friendly_name, &rev.definition) {
                        Ok(f) => {
                            self.register(Arc::new(f));
                            n += 1;
                        }
                        Err(e) => {
                            tracing::warn!(flow = %sid, error = %e, "stored flow does not load")
                        }
                    }
                }
                None => continue,
            }
        }
        Ok(n)
    }

    /// Find a flow stored through the API that this node has not loaded yet (another node created
    /// or published it) and register it; `None` when the store has no runnable revision.
    pub async fn load_stored_flow(
        &self,
        store: &Store,
        sid: &str,
    ) -> Result<Option<Arc<LoadedFlow>>, StoreError> {
        let Some(rev) = store.runnable_revision(sid).await? else {
            return Ok(None);
        };
        match LoadedFlow::with_sid(sid, &rev.friendly_name, &rev.definition) {
            Ok(f) => {
                let f = Arc::new(f);
                self.register(f.clone());
                Ok(Some(f))
            }
            Err(e) => {
                tracing::warn!(flow = %sid, error = %e, "stored flow does not load");
                Ok(None)
            }
        }
    }

    /// A router that sends everything to one flow (the chat CLI, tests).
    pub fn single(flow: LoadedFlow) -> Router {
        Router {
            default: Arc::new(flow),
            default_is_demo: false,
            by_number: HashMap::new(),
            subflow_files: Vec::new(),
            subflow_alias: HashMap::new(),
            numbers: RwLock::default(),
            refreshing: tokio::sync::Mutex::new(()),
            dynamic: RwLock::default(),
        }
    }

    /// The default flow (`flow`, else [`DEMO_FLOW`]) and the `[[routes]]` of `cfg`.
    pub fn from_config(cfg: &Config) -> Result<Router, RoutingError> {
        let default = match &cfg.flow {
            Some(p) => LoadedFlow::from_file(p)?,
            None => LoadedFlow::from_json("examples/demo-ivr.json (bundled)", DEMO_FLOW)?,
        };
        let mut by_number = HashMap::new();
        for r in &cfg.routes {
            by_number.insert(
                normalize(&r.number),
                Arc::new(LoadedFlow::from_file(&r.flow)?),
            );
        }
        let mut subflow_files = Vec::new();
        let mut subflow_alias = HashMap::new();
        for (twilio_sid, target) in &cfg.subflows {
            let target = target.trim();
            let sid = if is_flow_sid(target) {
                target.to_string()
            } else {
                let f = Arc::new(LoadedFlow::from_file(Path::new(target))?);
                let sid = f.sid.clone();
                subflow_files.push(f);
                sid
            };
            subflow_alias.insert(twilio_sid.trim().to_string(), sid);
        }
        Ok(Router {
            default: Arc::new(default),
            default_is_demo: cfg.flow.is_none(),
            by_number,
            subflow_files,
            subflow_alias,
            numbers: RwLock::default(),
            refreshing: tokio::sync::Mutex::new(()),
            dynamic: RwLock::default(),
        })
    }

    /// The flow for a dialled or messaged number: its `[[routes]]` entry, else the flow its
    /// API number's URL names, else the default; None when nothing answers it.
    pub fn route_for(&self, number: &str, incoming: Incoming) -> Option<Arc<LoadedFlow>> {
        let n = normalize(number);
        if let Some(f) = self.by_number.get(&n) {
            return Some(f.clone());
        }
        let numbers = self.numbers.read().unwrap_or_else(|p| p.into_inner());
        if let Some(r) = numbers.get(&n) {
            let sid = match incoming {
                Incoming::Call => r.voice.as_deref(),
                Incoming::Message => r.sms.as_deref(),
            };
            // A number whose URL names no flow here is routed nowhere, not to the default.
            return sid.and_then(|s| self.by_sid(s));
        }
        let demo_only = self.default_is_demo && !(self.by_number.is_empty() && numbers.is_empty());
        (!demo_only).then(|| self.default.clone())
    }

    /// The default flow (the chat CLI's).
    pub fn default_flow(&self) -> Arc<LoadedFlow> {
        self.default.clone()
    }

    /// The `[[routes]]` entries: (number, flow SID).
    pub fn configured_numbers(&self) -> Vec<(String, String)> {
        let mut v: Vec<(String, String)> = self
            .by_number
            .iter()
            .map(|(n, f)| (n.clone(), f.sid.clone()))
            .collect();
        v.sort();
        v
    }

    /// Replace the API numbers with what the store holds.
    pub fn set_numbers(&self, records: &[crate::store::NumberRecord]) {
        let map = records
            .iter()
            .map(|r| {
                (
                    normalize(&r.phone_number),
                    NumberRoute {
                        voice: flow_sid_in_url(&r.voice_url),
                        sms: flow_sid_in_url(&r.sms_url),
                    },
                )
            })
            .collect();
        *self.numbers.write().unwrap_or_else(|p| p.into_inner()) = map;
    }

    /// Reload the API numbers from the store (at start, after a change, and every few seconds
    /// for changes other nodes made).
    pub async fn refresh_numbers(&self, store: &Store) -> Result<(), StoreError> {
        let _one = self.refreshing.lock().await;
        let records = store.numbers().await?;
        // A number may name a flow another node created after this one loaded its flows.
        for r in &records {
            for sid in [flow_sid_in_url(&r.voice_url), flow_sid_in_url(&r.sms_url)]
                .into_iter()
                .flatten()
            {
                if self.by_sid(&sid).is_none() {
                    self.load_stored_flow(store, &sid).await?;
                }
            }
        }
        self.set_numbers(&records);
        Ok(())
    }

    /// What `contact` runs of `flow`: a test user of a flow created through the API runs its
    /// latest revision (the draft), as Studio does; None when that is `flow` itself (anyone
    /// else, configured flows, or a store that cannot say).
    pub async fn test_revision(
        &self,
        store: &Store,
        flow: &LoadedFlow,
        contact: &str,
    ) -> Option<Arc<LoadedFlow>> {
        if self.configured(&flow.sid).is_some() {
            return None;
        }
        match store.is_test_user(&flow.sid, contact).await {
            Ok(true) => {}
            Ok(false) => return None,
            Err(e) => {
                tracing::warn!(flow = %flow.sid, error = %e, "cannot look up the flow's test users");
                return None;
            }
        }
        let rev = match store.latest_revision(&flow.sid, false).await {
            Ok(Some(r)) => r,
            Ok(None) => return None,
            Err(e) => {
                tracing::warn!(flow = %flow.sid, error = %e, "cannot read the flow's latest revision");
                return None;
            }
        };
        match LoadedFlow::with_sid(&flow.sid, &rev.friendly_name, &rev.definition) {
            Ok(f) => {
                tracing::info!(flow = %flow.sid, revision = rev.revision, %contact, "test user: running the latest revision");
                Some(Arc::new(f))
            }
            Err(e) => {
                tracing::warn!(flow = %flow.sid, revision = rev.revision, error = %e, "the test users' revision does not load; running the published one");
                None
            }
        }
    }

    /// A configured flow or one registered through the API.
    pub fn by_sid(&self, sid: &str) -> Option<Arc<LoadedFlow>> {
        self.flows().find(|f| f.sid == sid).cloned().or_else(|| {
            self.dynamic
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .get(sid)
                .cloned()
        })
    }

    /// A configured flow (from the config file or the command line), not one from the API.
    pub fn configured(&self, sid: &str) -> Option<Arc<LoadedFlow>> {
        self.flows().find(|f| f.sid == sid).cloned()
    }

    /// The configured flows (the default, the routed ones and `[subflows]` files).
    pub fn flows(&self) -> impl Iterator<Item = &Arc<LoadedFlow>> {
        std::iter::once(&self.default)
            .chain(self.by_number.values())
            .chain(self.subflow_files.iter())
    }

    /// The SID of the flow that runs for a run-subflow's `flow_sid`: its `[subflows]` mapping,
    /// or itself.
    pub fn subflow_sid<'a>(&'a self, flow_sid: &'a str) -> &'a str {
        self.subflow_alias
            .get(flow_sid.trim())
            .map(String::as_str)
            .unwrap_or(flow_sid)
    }

    /// Make a flow findable by its SID (replacing an earlier version of it).
    pub fn register(&self, flow: Arc<LoadedFlow>) {
        self.dynamic
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(flow.sid.clone(), flow);
    }

    /// Forget a flow registered through the API (it was deleted).
    pub fn unregister(&self, sid: &str) {
        self.dynamic
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(sid);
    }
}

/// The flow SID a Studio webhook URL names (`https://webhooks.twilio.com/v1/Accounts/AC…/Flows/FW…`,
/// or this gateway's own `…/Flows/FW…`).
pub fn flow_sid_in_url(url: &str) -> Option<String> {
    let path = url.split(['?', '#']).next()?;
    let mut parts = path.split('/');
    parts.find(|p| p.eq_ignore_ascii_case("flows"))?;
    let sid = parts.next()?;
    is_flow_sid(sid).then(|| sid.to_string())
}

fn is_flow_sid(s: &str) -> bool {
    s.len() == 34 && s.starts_with("FW") && s[2..].bytes().all(|b| b.is_ascii_hexdigit())
}

/// Numbers compare without visual separators: `+1 (555) 010-0000` is `+15550100000`.
pub fn normalize(n: &str) -> String {
    n.chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '+' || *c == '*' || *c == '#')
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_route_by_their_urls_and_the_demo_answers_only_while_nothing_is_routed() {
        let demo = LoadedFlow::from_json("demo", DEMO_FLOW).unwrap();
        let router = Router {
            default: Arc::new(demo),
            default_is_demo: true,
            by_number: HashMap::new(),
            subflow_files: Vec::new(),
            subflow_alias: HashMap::new(),
            numbers: RwLock::default(),
            refreshing: tokio::sync::Mutex::new(()),
            dynamic: RwLock::default(),
        };
        assert!(
            router.route_for("+15550000001", Incoming::Call).is_some(),
            "the demo"
        );
        let sid = "FW0123456789abcdef0123456789abcdef";
        router.register(Arc::new(
            LoadedFlow::with_sid(sid, "api", DEMO_FLOW).unwrap(),
        ));
        let rec = |number: &str, voice: &str| crate::store::NumberRecord {
            sid: "PN1".into(),
            phone_number: number.into(),
            friendly_name: String::new(),
            voice_url: voice.into(),
            voice_method: "POST".into(),
            sms_url: String::new(),
            sms_method: "POST".into(),
            date_created: String::new(),
            date_updated: String::new(),
        };
        router.set_numbers(&[
            rec(
                "+1 555 000 0002",
                &format!("https://webhooks.twilio.com/v1/Accounts/AC1/Flows/{sid}"),
            ),
            rec("+15550000003", "https://example.com/twiml"),
        ]);
        assert_eq!(
            router
                .route_for("+15550000002", Incoming::Call)
                .unwrap()
                .sid,
            sid
        );
        assert!(
            router
                .route_for("+15550000002", Incoming::Message)
                .is_none(),
            "no SMS URL"
        );
        assert!(
            router.route_for("+15550000003", Incoming::Call).is_none(),
            "not a flow URL"
        );
        assert!(
            router.route_for("+15550000001", Incoming::Call).is_none(),
            "once numbers are routed, the demo no longer answers the rest"
        );
        assert_eq!(
            flow_sid_in_url(&format!("http://127.0.0.1:8080/v2/Flows/{sid}?x=1")).as_deref(),
            Some(sid)
        );
        assert_eq!(flow_sid_in_url("http://x/Flows/FWnothex"), None);
    }

    #[test]
    fn dynamic_flows_are_found_by_sid() {
        let router = Router::single(LoadedFlow::from_json("demo", DEMO_FLOW).unwrap());
        let sid = "FW0123456789abcdef0123456789abcdef";
        assert!(router.by_sid(sid).is_none());
        router.register(Arc::new(
            LoadedFlow::with_sid(sid, "api", DEMO_FLOW).unwrap(),
        ));
        assert_eq!(router.by_sid(sid).unwrap().name, "api");
        assert!(router.configured(sid).is_none());
        let demo = router.flows().next().unwrap().sid.clone();
        assert!(router.by_sid(&demo).is_some());
        router.unregister(sid);
        assert!(router.by_sid(sid).is_none());
    }
}
