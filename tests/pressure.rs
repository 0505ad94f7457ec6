//! PSI triggers on the real kernel: quiet while memory is calm, awake when a
//! cgroup of the test's own stalls on memory. The stall needs a cgroup2
//! memory controller: the VM suite (integration/vm-test); the host says
//! SKIP for that part.

use std::process::{Command, Stdio};
use std::time::Duration;

use gov::cgroup::Cgroup;
use gov::pressure::{Trigger, HOST_PSI};
use gov_testkit as kit;

use kit::{has_cap_sys_resource, needs_controllers, skip, Kid, TestRoot};

#[test]
fn a_trigger_on_the_host_stays_quiet_while_calm() {
    kit::require_root();
    let test = "a_trigger_on_the_host_stays_quiet_while_calm";
    if !has_cap_sys_resource() {
        // Measured here (kernel 6.18, root without CAP_SYS_RESOURCE): a
        // `some 1800000 2000000` trigger on /proc/pressure/memory fired 1 s
        // and 3 s after arming with avg10 at 0.00. It arms; quiet it is not.
        Trigger::arm(
            HOST_PSI,
            Duration::from_millis(1800),
            Duration::from_secs(2),
        )
        .expect("a 2 s window arms without CAP_SYS_RESOURCE");
        skip(
            test,
            "no CAP_SYS_RESOURCE: the kernel's unprivileged triggers report events on a calm host",
        );
        return;
    }
    // 900 ms stalled in each second: a calm host never comes near.
    let trigger = Trigger::arm(HOST_PSI, Duration::from_millis(900), Duration::from_secs(1))
        .expect("a trigger arms on /proc/pressure/memory");
    assert!(!trigger.wait(Duration::from_millis(500)).unwrap());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let waited = runtime.block_on(async {
        tokio::time::timeout(Duration::from_millis(500), trigger.fired()).await
    });
    assert!(waited.is_err(), "fired on a calm host: {waited:?}");
}

#[test]
fn a_one_second_window_needs_cap_sys_resource() {
    kit::require_root();
    let armed = Trigger::arm(HOST_PSI, Duration::from_millis(900), Duration::from_secs(1));
    if has_cap_sys_resource() {
        armed.expect("a 1 s window arms with CAP_SYS_RESOURCE");
    } else {
        let err = armed.unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::PermissionDenied);
        assert!(err.to_string().contains("multiple of 2s"), "{err}");
    }
}

#[test]
fn a_trigger_fires_when_its_cgroup_stalls_on_memory() {
    if !needs_controllers("a_trigger_fires_when_its_cgroup_stalls_on_memory") {
        return;
    }
    let root = TestRoot::new();
    let top = Cgroup::new(&root.path);
    top.create().unwrap();
    top.write_subtree_control(&["memory"]).unwrap();
    let squeezed = top.child("squeezed");
    squeezed.create().unwrap();
    squeezed.write_file("memory.max", "32M").unwrap();
    squeezed.write_file("memory.high", "24M").unwrap();
    // 50 ms stalled within a second: reclaim under memory.max (zram swap in
    // the VM, else the OOM killer after reclaim fails) stalls far more.
    let trigger = Trigger::arm(
        squeezed.path().join("memory.pressure"),
        Duration::from_millis(50),
        Duration::from_secs(1),
    )
    .unwrap();
    assert!(
        !trigger.wait(Duration::ZERO).unwrap(),
        "fired before anything ran"
    );
    // dd's one 128 MiB buffer, filled from /dev/zero four times: every page
    // written, four times what memory.max allows.
    let procs = squeezed.path().join("cgroup.procs");
    let script = format!(
        "echo $$ > {}; exec dd if=/dev/zero of=/dev/null bs=128M count=4",
        procs.display()
    );
    let _hog = Kid::new(
        Command::new("sh")
            .args(["-c", &script])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    // A bound, not a sleep: it returns at the event (a slow VM gets room).
    assert!(
        trigger.wait(Duration::from_secs(10)).unwrap(),
        "no PSI event from a cgroup thrashing under memory.max; memory.pressure: {:?}",
        squeezed.read_file("memory.pressure")
    );
}
