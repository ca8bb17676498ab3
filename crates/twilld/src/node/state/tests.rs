use super::Selected;
use super::*;
use Effect::*;

const RESYNC: Duration = Duration::from_secs(5);

fn started() -> (State, Instant) {
    let t0 = Instant::now();
    (State::new(t0, RESYNC), t0)
}

/// A store batch: a re-list (`snapshot`), or one that lost our own lease.
fn batch(snapshot: bool, own_lost: bool) -> Input {
    Input::Store { snapshot, own_lost }
}

/// A node past its first snapshot.
fn ready() -> (State, Instant) {
    let (mut s, t0) = started();
    s.on(batch(true, false), t0);
    (s, t0)
}

fn full(trigger: Trigger) -> Effect {
    Pass {
        full: true,
        trigger,
    }
}

#[test]
fn the_first_snapshot_makes_the_node_ready_and_writes_subnet_env() {
    let (mut s, t0) = started();
    // Nothing periodic happens before the first snapshot.
    assert!(s
        .on(
            Input::Resync {
                touched: Some(true)
            },
            t0
        )
        .is_empty());
    let out = s.on(batch(true, false), t0);
    assert_eq!(
        out,
        [
            full(Trigger::Event),
            WriteSubnetEnv,
            Announce,
            Ready,
            NotifyReady
        ]
    );
    assert!(s.ready());
    // A later event goes in alone; a re-list is compared in full, and subnet.env stays.
    let ev = batch(false, false);
    assert_eq!(
        s.on(ev, t0)[0],
        Pass {
            full: false,
            trigger: Trigger::Event
        }
    );
    let relist = s.on(batch(true, false), t0);
    assert_eq!(relist, [full(Trigger::Event), NotifyReady]);
}

#[test]
fn events_before_the_snapshot_are_compared_in_full_and_do_not_make_ready() {
    let (mut s, t0) = started();
    let out = s.on(batch(false, false), t0);
    assert_eq!(out, [full(Trigger::Event), NotifyReady]);
    assert!(!s.ready());
}

#[test]
fn a_lost_lease_is_acquired_again_before_a_full_pass() {
    let (mut s, t0) = ready();
    let out = s.on(batch(false, true), t0);
    assert_eq!(
        out,
        [
            Reacquire,
            full(Trigger::Event),
            ScheduleRenewal,
            NotifyReady
        ]
    );
    // The renewal finding it gone does the same.
    assert_eq!(
        s.on(Input::Renewal(Renewal::Lost), t0),
        [Reacquire, full(Trigger::Event), ScheduleRenewal]
    );
    assert_eq!(s.on(Input::Renewal(Renewal::Failed), t0), [RetryRenewal]);
    assert_eq!(
        s.on(Input::Renewal(Renewal::Renewed), t0),
        [ScheduleRenewal]
    );
}

#[test]
fn a_changed_subnet_is_programmed_written_and_announced() {
    let (mut s, t0) = started();
    // Before ready, only the device learns it (subnet.env comes with readiness).
    assert_eq!(s.on(Input::Reacquired { moved: true }, t0), [ProgramLease]);
    s.on(batch(true, false), t0);
    assert_eq!(
        s.on(Input::Reacquired { moved: true }, t0),
        [ProgramLease, WriteSubnetEnv, Announce]
    );
    assert!(s.on(Input::Reacquired { moved: false }, t0).is_empty());
}

#[test]
fn a_burst_of_removals_is_one_repair_after_the_window() {
    let (mut s, t0) = ready();
    for i in 0..1000 {
        assert!(s
            .on(Input::Removed, t0 + Duration::from_micros(i))
            .is_empty());
    }
    // The window opened by the first removal, not pushed on by the rest.
    assert_eq!(s.repair_at(), Some(t0 + repairs::COALESCE));
    assert!(!s.listens_for_removals() && !s.listens_for_rules());
    let due = t0 + repairs::COALESCE;
    assert_eq!(
        s.on(Input::RepairDue, due),
        [full(Trigger::Removed), NotifyReady]
    );
    assert_eq!(s.repair_at(), None);
    // Due twice is one repair.
    assert!(s.on(Input::RepairDue, due).is_empty());
}

#[test]
fn a_rules_change_waits_longer_and_a_removal_widens_it_to_a_full_pass() {
    let (mut s, t0) = ready();
    s.on(Input::RulesChanged, t0);
    assert_eq!(s.repair_at(), Some(t0 + repairs::COALESCE_RULES));
    assert!(!s.listens_for_rules() && s.listens_for_removals());
    s.on(Input::Removed, t0);
    assert_eq!(
        s.on(Input::RepairDue, t0 + repairs::COALESCE),
        [full(Trigger::Removed), NotifyReady]
    );
    s.on(Input::RulesChanged, t0);
    assert_eq!(
        s.on(Input::RepairDue, t0 + repairs::COALESCE_RULES),
        [
            Check {
                trigger: Trigger::Removed
            },
            NotifyReady
        ]
    );
}

#[test]
fn a_fight_over_one_object_backs_the_repairs_off() {
    let (mut s, t0) = ready();
    let route = || vec![("route", "10.244.7.0/24".to_string())];
    let mut now = t0;
    let mut waits = Vec::new();
    for _ in 0..4 {
        s.on(Input::Removed, now);
        let at = s.repair_at().unwrap();
        waits.push(at - now);
        s.on(Input::RepairDue, at);
        let out = s.on(Input::Restored(route()), at);
        now = at + Duration::from_millis(1);
        if waits.len() > 1 {
            assert_eq!(out, [Conflicts(vec!["route"])]);
        } else {
            assert!(out.is_empty(), "the first repair is no fight");
        }
    }
    // The second repair is known to be a fight only once it is done; from then on
    // each waits twice as long as the one before.
    assert_eq!(waits[..2], [repairs::COALESCE, repairs::COALESCE]);
    assert!(waits[2] > waits[1] && waits[3] > waits[2], "{waits:?}");
    assert!(waits.iter().all(|w| *w <= RESYNC), "capped at the resync");
    assert_eq!(s.repairs().conflicts()[0].repairs, 3);
    // Removals before the node is ready wait for its first full pass instead.
    let (mut fresh, t) = started();
    fresh.on(Input::Removed, t);
    assert!(fresh.on(Input::RepairDue, t + repairs::COALESCE).is_empty());
}

#[test]
fn resyncs_read_the_kernel_only_when_needed() {
    let (mut s, t0) = ready();
    let t = t0 + RESYNC;
    let light = [
        Check {
            trigger: Trigger::Resync,
        },
        NotifyReady,
    ];
    assert_eq!(
        s.on(
            Input::Resync {
                touched: Some(false)
            },
            t
        ),
        light
    );
    assert_eq!(
        s.on(
            Input::Resync {
                touched: Some(true)
            },
            t
        ),
        [RefreshPolicy, full(Trigger::Resync), NotifyReady]
    );
    assert_eq!(
        s.on(Input::Resync { touched: None }, t)[1],
        full(Trigger::Resync),
        "no monitor: every resync reads the kernel"
    );
    // The backstop: a full pass at least every FULL_PASS_BACKSTOP.
    let late = t + schedule::FULL_PASS_BACKSTOP;
    assert_eq!(
        s.on(
            Input::Resync {
                touched: Some(false)
            },
            late
        )[1],
        full(Trigger::Resync)
    );
    assert_eq!(
        s.on(
            Input::Resync {
                touched: Some(false)
            },
            late
        ),
        light
    );
}

#[test]
fn a_refused_reload_changes_nothing() {
    let (mut s, t0) = started();
    for read in [ReloadRead::Unchanged, ReloadRead::Refused("bad".into())] {
        assert!(s.on(Input::Reload(read), t0).is_empty());
    }
    assert_eq!(s.on(Input::Reload(ReloadRead::Changed), t0), [ApplyConfig]);
}

#[test]
fn an_applied_config_re_leases_only_when_the_lease_no_longer_serves() {
    let (mut s, t0) = started();
    assert_eq!(
        s.on(Input::ConfigApplied { keeps_lease: true }, t0),
        [ProgramLease, RefreshPolicy, full(Trigger::Event), Announce]
    );
    s.on(batch(true, false), t0);
    assert_eq!(
        s.on(Input::ConfigApplied { keeps_lease: false }, t0),
        [
            Reacquire,
            ProgramLease,
            RefreshPolicy,
            full(Trigger::Event),
            WriteSubnetEnv,
            Announce
        ]
    );
}

#[test]
fn a_deleted_device_is_refilled_at_once() {
    let (mut s, t0) = started();
    assert_eq!(
        s.on(Input::DeviceDeleted, t0),
        [full(Trigger::DeviceDeleted)]
    );
}

#[test]
fn host_changes_settle_before_the_underlay_is_chosen_again() {
    let (mut s, t0) = ready();
    for i in 0..50 {
        assert!(s
            .on(Input::HostChanged, t0 + Duration::from_millis(i))
            .is_empty());
    }
    // One check, timed from the first change.
    assert_eq!(s.underlay_check_at(), Some(t0 + UNDERLAY_SETTLE));
    assert_eq!(
        s.on(Input::UnderlayDue, t0 + UNDERLAY_SETTLE),
        [SelectUnderlay]
    );
    assert_eq!(s.underlay_check_at(), None);
    assert!(s.on(Input::UnderlaySelected(Selected::Same), t0).is_empty());
}

#[test]
fn a_moved_underlay_moves_the_device_then_the_lease() {
    let (mut s, t0) = ready();
    assert_eq!(
        s.on(Input::UnderlaySelected(Selected::Moved), t0),
        [ApplyUnderlay]
    );
    assert_eq!(
        s.on(
            Input::UnderlayApplied {
                attrs_changed: true
            },
            t0
        ),
        [
            Republish,
            ProgramLease,
            RefreshPolicy,
            full(Trigger::Event),
            WriteSubnetEnv,
            Announce,
            NotifyReady
        ]
    );
    // Same address on a new parent: the lease says the same.
    assert_eq!(
        s.on(
            Input::UnderlayApplied {
                attrs_changed: false
            },
            t0
        )[0],
        ProgramLease
    );
    assert!(s.on(Input::Republished { ours: true }, t0).is_empty());
    assert_eq!(s.on(Input::Republished { ours: false }, t0), [Reacquire]);
}

#[test]
fn without_an_underlay_nothing_is_programmed_until_one_returns() {
    let (mut s, t0) = ready();
    let lost = || Input::UnderlaySelected(Selected::Lost("eth0 gone".into()));
    assert_eq!(s.on(lost(), t0), [UnderlayLost("eth0 gone".into())]);
    assert!(s.on(lost(), t0).is_empty(), "said once");
    // No retry loop: resyncs, a deleted device and removals wait for the monitor's word.
    assert!(s.on(Input::Resync { touched: None }, t0).is_empty());
    assert!(s.on(Input::DeviceDeleted, t0).is_empty());
    s.on(Input::Removed, t0);
    assert!(s.on(Input::RepairDue, t0 + RESYNC).is_empty());
    // The same interface back (re-created with its name and address).
    assert_eq!(
        s.on(Input::UnderlaySelected(Selected::Same), t0),
        [UnderlayBack, full(Trigger::Event), NotifyReady]
    );
    s.on(lost(), t0);
    assert_eq!(
        s.on(Input::UnderlaySelected(Selected::Moved), t0),
        [UnderlayBack, ApplyUnderlay]
    );
}
