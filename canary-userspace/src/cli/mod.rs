//! The command line's side of the admin API: finding the daemon and talking to it
//! ([`client`]), and showing what it says ([`render`]).

pub(crate) mod client;
pub(crate) mod render;
