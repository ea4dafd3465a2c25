//! SIP signalling: parsing (rsip, via rsipstack), our sans-IO UAS core, its tokio driver,
//! SDP offer/answer and the inbound ACL.

pub mod acl;
pub mod core;
pub mod defence;
pub(crate) mod endpoint;
pub mod message;
pub mod sdp;

pub use self::core::{
    Command, CoreConfig, DialogEnd, Event, IncomingInvite, Peer, TcpLimits, Transport,
};
pub(crate) use endpoint::{Endpoint, SipHandle};
