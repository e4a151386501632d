//! Message decoding on arbitrary MessagePack: a typed envelope or a typed error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wazuh_cluster_protocol::message::{self};
use wazuh_cluster_protocol::{MasterToWorker, WorkerToMaster};

fuzz_target!(|data: &[u8]| {
    if let Ok(env) = message::decode::<WorkerToMaster>(data) {
        // What decodes must re-encode and decode to the same value.
        let again = message::to_bytes(&env).expect("re-encode");
        assert_eq!(message::decode::<WorkerToMaster>(&again).expect("round trip"), env);
    }
    let _ = message::decode::<MasterToWorker>(data);
});
