//! The only module that uses aya: loads, attaches, pins and re-opens the XDP program.
