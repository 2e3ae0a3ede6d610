//! Packet fixtures through the real XDP program (`BPF_PROG_TEST_RUN`), katran style: each
//! fixture is an input frame, the expected action, the expected output frame and the expected
//! change of every global counter. One file per feature; `support` holds the services and the
//! checker. Needs root; run with `--test-threads=1`.

mod backend_choice;
mod deadman;
mod flood_guard;
mod flows;
mod forwarding;
mod icmp;
mod mac;
mod malformed;
mod misses;
mod support;
mod syn;
mod weights;
