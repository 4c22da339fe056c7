//! Port events in every process (issue: events in every process): a link change at the
//! emulator reaches every process that holds the port through its own link-status interrupt
//! (DPDK's `RTE_ETH_EVENT_INTR_LSC`, which DPDK's own secondaries never get), and a surprise
//! removal gives `RTE_ETH_EVENT_INTR_RMV` before the port goes, in every process. Each
//! `hotplug_mp` prints its events on stderr (`event: port 1 link down`).

use std::time::Duration;

use lab_harness::Lab;

const BDF: &str = "0000:00:05.0";
const WAIT: Duration = Duration::from_secs(15);
const PROCS: [&str; 3] = ["primary", "s1", "s2"];

/// What each process wrote to stderr so far (`Lab::stderr` gives each line once).
#[derive(Default)]
struct Seen([String; 3]);

impl Seen {
    fn update(&mut self, lab: &Lab) {
        for (i, p) in PROCS.iter().enumerate() {
            let more = lab.stderr(p);
            if !more.is_empty() {
                self.0[i].push_str(&more);
                self.0[i].push('\n');
            }
        }
    }

    /// Waits until every process printed `event: port P <what>` `nth` times in all.
    fn every_process(&mut self, lab: &Lab, port: u16, what: &str, nth: usize) {
        let line = format!("event: port {port} {what}");
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            self.update(lab);
            if self.0.iter().all(|e| e.lines().filter(|x| x.trim() == line).count() >= nth) {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "not every process printed {line:?} {nth} time(s): {:?}",
                PROCS.iter().zip(&self.0).collect::<Vec<_>>()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn link_changes_and_a_surprise_removal_reach_every_process_as_events(model: &str, threads: &str, thread: &str) {
    let mut lab =
        Lab::builder().secondaries(2).nic(BDF, model, "loopback").device_threads(threads).start().expect("lab");
    assert_eq!(lab.nic_command("threads").unwrap().trim(), format!("{BDF}={thread}"), "--device-threads {threads}");
    let port = lab.attach("s1", BDF).expect("attach").0;
    let mut seen = Seen::default();
    seen.every_process(&lab, port, "new", 1);
    for round in 1..=3 {
        lab.link_down(BDF).unwrap();
        seen.every_process(&lab, port, "link down", round);
        lab.link_up(BDF).unwrap();
        seen.every_process(&lab, port, "link up", round);
    }
    lab.unplug(BDF).unwrap();
    seen.every_process(&lab, port, "removed", 1);
    seen.every_process(&lab, port, "destroy", 1);
    for (p, err) in PROCS.iter().zip(&seen.0) {
        let (rmv, destroy) =
            (err.find(&format!("event: port {port} removed")), err.find(&format!("event: port {port} destroy")));
        assert!(rmv < destroy, "{p}: RMV before DESTROY: {err}");
    }
}

#[test]
fn an_82599s_link_changes_and_removal_reach_every_process_as_events() {
    link_changes_and_a_surprise_removal_reach_every_process_as_events("ixgbe", "1", "device-0");
}

#[test]
fn an_x710s_link_changes_and_removal_reach_every_process_as_events() {
    link_changes_and_a_surprise_removal_reach_every_process_as_events("i40e", "per-function", "device");
}
