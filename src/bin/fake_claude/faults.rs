//! Faults and stalls a directive scripts: a tool left running in the group, memory held,
//! a turn that never ends.

use std::process;
use std::thread;
use std::time::Duration;

use crate::protocol::fatal;

/// Starts a long-running tool in this process's group (as a Bash tool call would) and
/// leaves it running.
pub(crate) fn spawn_tool() -> u32 {
    match process::Command::new("sleep")
        .arg("300")
        .stdin(process::Stdio::null())
        .stdout(process::Stdio::null())
        .spawn()
    {
        Ok(child) => {
            eprintln!("tool pid {}", child.id());
            child.id()
        }
        Err(err) => fatal(&format!("Error: cannot start a tool: {err}"), 1),
    }
}

/// Makes `mib` MiB resident (every page written) and keeps it until the process ends, so a
/// test can watch a CLI's memory grow.
pub(crate) fn allocate(mib: usize) {
    let held: &'static mut [u8] = vec![1u8; mib << 20].leak();
    // Keeps the compiler from dropping an allocation that is never read.
    std::hint::black_box(held);
}

/// A turn that never ends: only a signal stops the process.
pub(crate) fn hang_forever() -> ! {
    loop {
        thread::sleep(Duration::from_secs(3600));
    }
}
