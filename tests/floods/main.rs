//! Floods against the node's ports, in a test binary of their own: each test bounds the memory this
//! process gains while a flood is on, so no other test may run nodes in it meanwhile, and these
//! tests run one at a time ([`floods::one_at_a_time`]).

#[path = "../common/mod.rs"]
mod common;

mod floods;
