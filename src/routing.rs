//! Which flow answers which number: `[[routes]]` in config, and the default flow (`--flow`, or
//! the bundled demo IVR) for everything else. Flows are validated when loaded.

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

/// Which flow answers a number, and the flows known by SID.
pub struct Router {
    default: Arc<LoadedFlow>,
    by_number: HashMap<String, Arc<LoadedFlow>>,
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
            by_number: HashMap::new(),
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
        Ok(Router {
            default: Arc::new(default),
            by_number,
            dynamic: RwLock::default(),
        })
    }

    /// The flow for a dialled or messaged number: its route, else the default flow.
    pub fn route(&self, number: &str) -> Arc<LoadedFlow> {
        self.by_number
            .get(&normalize(number))
            .cloned()
            .unwrap_or_else(|| self.default.clone())
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

    /// The configured flows (the default and the routed ones).
    pub fn flows(&self) -> impl Iterator<Item = &Arc<LoadedFlow>> {
        std::iter::once(&self.default).chain(self.by_number.values())
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

/// Numbers compare without visual separators: `+1 (555) 010-0000` is `+15550100000`.
fn normalize(n: &str) -> String {
    n.chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '+' || *c == '*' || *c == '#')
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

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
