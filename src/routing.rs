//! Which flow answers which number: `[[routes]]` in config, and the default flow (`--flow`, or
//! the bundled demo IVR) for everything else. Flows are validated when loaded.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, RwLock};

use sha2::{Digest, Sha256};

use crate::config::Config;
use crate::flow::Flow;

pub const DEMO_FLOW: &str = include_str!("../examples/demo-ivr.json");

#[derive(Debug, thiserror::Error)]
pub enum RoutingError {
    #[error("cannot read flow {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("flow {path} is invalid:\n{errors}")]
    Invalid { path: String, errors: String },
}

/// A validated flow with the SID it is known by (derived from its content, so it is stable
/// across restarts and the same on every node).
pub struct LoadedFlow {
    pub sid: String,
    pub name: String,
    pub flow: Flow,
}

impl LoadedFlow {
    pub fn from_json(name: &str, json: &str) -> Result<LoadedFlow, RoutingError> {
        let flow = Flow::from_json(json).map_err(|e| RoutingError::Invalid {
            path: name.to_string(),
            errors: e.to_string(),
        })?;
        let digest = Sha256::digest(json.as_bytes());
        Ok(LoadedFlow {
            sid: format!("FW{}", &hex::encode(digest)[..32]),
            name: name.to_string(),
            flow,
        })
    }

    /// A flow known by a SID given elsewhere (flows created through the REST API).
    pub fn with_sid(sid: &str, name: &str, json: &str) -> Result<LoadedFlow, RoutingError> {
        let flow = Flow::from_json(json).map_err(|e| RoutingError::Invalid {
            path: name.to_string(),
            errors: e.to_string(),
        })?;
        Ok(LoadedFlow {
            sid: sid.to_string(),
            name: name.to_string(),
            flow,
        })
    }

    pub fn from_file(path: &Path) -> Result<LoadedFlow, RoutingError> {
        let name = path.display().to_string();
        let json = std::fs::read_to_string(path).map_err(|source| RoutingError::Read {
            path: name.clone(),
            source,
        })?;
        Self::from_json(&name, &json)
    }
}

pub struct Router {
    default: Arc<LoadedFlow>,
    by_number: HashMap<String, Arc<LoadedFlow>>,
    /// Flows created through the REST API, by SID (their published revision, or their latest
    /// one while none is published); they change at run time.
    dynamic: RwLock<HashMap<String, Arc<LoadedFlow>>>,
}

impl Router {
    /// A router that sends everything to one flow (the chat CLI, tests).
    pub fn single(flow: LoadedFlow) -> Router {
        Router {
            default: Arc::new(flow),
            by_number: HashMap::new(),
            dynamic: RwLock::default(),
        }
    }

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
