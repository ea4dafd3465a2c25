//! SIP signalling: parsing (rsip, via rsipstack), our sans-IO UAS core, its tokio driver,
//! SDP offer/answer and the inbound ACL.

pub mod acl;
pub mod client_tx;
pub mod core;
pub mod defence;
pub mod digest;
pub mod endpoint;
pub mod keepalive;
pub mod message;
pub mod register;
pub mod registrar;
pub mod sdp;
pub mod session_timer;
pub mod trust;

pub use self::core::{
    Command, CoreConfig, DialogEnd, Event, IncomingInvite, Peer, TcpLimits, Transport,
};
pub use endpoint::{Endpoint, SipHandle};
