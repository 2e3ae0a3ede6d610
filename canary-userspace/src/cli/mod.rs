//! The command line's side of the admin API: finding the daemon and talking to it
//! ([`client`]), and showing what it says ([`render`]); and `canary init` ([`init`]), which
//! talks to the backends instead.

pub(crate) mod client;
pub(crate) mod init;
pub(crate) mod render;
pub(crate) mod watch;
