//! SIP signalling: parsing (rsip, via rsipstack), our sans-IO UAS core, its tokio driver,
//! SDP offer/answer and the inbound ACL.

pub mod acl;
pub(crate) mod client_tx;
pub mod core;
pub mod defence;
pub mod dial;
pub mod digest;
pub(crate) mod endpoint;
pub mod keepalive;
pub mod message;
pub mod register;
pub mod registrar;
pub mod sdp;
pub(crate) mod session_timer;
pub mod trust;

pub use self::core::{
    Command, CoreConfig, DialogEnd, Event, IncomingInvite, Peer, TcpLimits, Transport,
};
pub(crate) use endpoint::{Endpoint, SipHandle};
