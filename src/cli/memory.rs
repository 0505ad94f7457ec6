//! What gov holds and gives back, as a person reads it: the line that ends
//! `gov ps`, and the relief lines of `gov status`. Pure functions of what
//! the daemon sends, so they are tested without one.

use crate::protocol::{GateInfo, GateState, MemorySource, ReliefStatus, Rung};

use super::human_bytes;

/// The last line of `gov ps`: how many gates, their memory by where it is,
/// and what suspension into swap and hibernation freed, e.g.
/// `12 gates: 2.1G running, 4.3G suspended (1.9G in swap), 6.2G hibernated
/// on disk: 8.1G freed`. Parts that are zero are left out.
pub fn ps_summary(gates: &[GateInfo]) -> String {
    let sum = |keep: &dyn Fn(&GateInfo) -> bool| -> u64 {
        gates
            .iter()
            .filter(|g| keep(g))
            .map(|g| g.memory_bytes)
            .sum()
    };
    let running = sum(&|g| g.state == GateState::Running && g.memory_source != MemorySource::Image);
    let suspended = sum(&|g| matches!(g.state, GateState::Suspended | GateState::Frozen));
    let on_disk = sum(&|g| g.memory_source == MemorySource::Image);
    let in_swap: u64 = gates.iter().filter_map(|g| g.swap_bytes).sum();

    let mut parts = Vec::new();
    if running > 0 {
        parts.push(format!("{} running", human_bytes(running)));
    }
    match (suspended, in_swap) {
        (0, 0) => {}
        (0, swap) => parts.push(format!("{} in swap", human_bytes(swap))),
        (held, 0) => parts.push(format!("{} suspended", human_bytes(held))),
        (held, swap) => parts.push(format!(
            "{} suspended ({} in swap)",
            human_bytes(held),
            human_bytes(swap)
        )),
    }
    if on_disk > 0 {
        parts.push(format!("{} hibernated on disk", human_bytes(on_disk)));
    }
    let count = match gates.len() {
        1 => "1 gate".to_string(),
        n => format!("{n} gates"),
    };
    let mut line = match parts.is_empty() {
        true => count,
        false => format!("{count}: {}", parts.join(", ")),
    };
    let freed = in_swap + on_disk;
    if freed > 0 {
        line += &format!(": {} freed", human_bytes(freed));
    }
    line + "\n"
}

/// `gov status`'s lines about memory relief: whether it is under way and
/// why, the pressure and MemAvailable against their limits, then the steps
/// and bytes freed by rung (a second line, once relief has acted).
pub fn relief_lines(r: &ReliefStatus) -> String {
    let state = match (&r.active, &r.trigger) {
        (true, Some(why)) => format!("active ({why})"),
        (true, None) => "active".to_string(),
        (false, Some(why)) => format!("calm (last: {why})"),
        (false, None) => "calm".to_string(),
    };
    let pressure = match (r.pressure_some_avg10, r.pressure_limit) {
        (Some(now), Some(limit)) => format!("pressure {now:.1}% of {limit}%"),
        (Some(now), None) => format!("pressure {now:.1}% (limit off)"),
        (None, Some(limit)) => format!("pressure unknown, limit {limit}%"),
        (None, None) => "pressure off".to_string(),
    };
    let available = format!(
        "available {} of {}",
        human_bytes(r.mem_available_bytes),
        human_bytes(r.mem_total_bytes)
    );
    let floor = match r.available_min_bytes {
        Some(min) => format!("{available} (floor {})", human_bytes(min)),
        None => format!("{available} (floor off)"),
    };
    let mut out = format!("relief: {state}; {pressure}; {floor}\n");
    let acted: Vec<String> = Rung::ALL
        .iter()
        .filter_map(|rung| {
            let steps = r.steps.get(rung).copied().unwrap_or(0);
            let freed = r.freed_bytes.get(rung).copied().unwrap_or(0);
            (steps > 0 || freed > 0)
                .then(|| format!("{} {steps} ({})", rung.as_str(), human_bytes(freed)))
        })
        .collect();
    if !acted.is_empty() {
        out += &format!("relief steps: {}\n", acted.join(", "));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::tests::gate;

    const M: u64 = 1 << 20;
    const G: u64 = 1 << 30;

    fn in_state(state: GateState, mem: u64, swap: Option<u64>) -> GateInfo {
        GateInfo {
            state,
            swap_bytes: swap,
            ..gate("s", "/p", mem, 0)
        }
    }

    fn hibernated(image: u64) -> GateInfo {
        GateInfo {
            memory_source: MemorySource::Image,
            ..in_state(GateState::Hibernated, image, None)
        }
    }

    #[test]
    fn running_gates_alone_say_only_what_runs() {
        let gates = vec![
            in_state(GateState::Running, 100 * M, None),
            in_state(GateState::Running, 20 * M, Some(0)),
            in_state(GateState::Running, 0, None),
        ];
        assert_eq!(ps_summary(&gates), "3 gates: 120M running\n");
        assert_eq!(ps_summary(&gates[2..]), "1 gate\n");
    }

    #[test]
    fn swap_and_hibernation_are_what_is_freed() {
        let gates = vec![
            in_state(GateState::Running, 2 * G, None),
            in_state(GateState::Suspended, 3 * G, Some(G)),
            in_state(GateState::Frozen, G, Some(G / 2)),
            hibernated(6 * G),
        ];
        assert_eq!(
            ps_summary(&gates),
            "4 gates: 2.0G running, 4.0G suspended (1.5G in swap), \
             6.0G hibernated on disk: 7.5G freed\n"
        );
    }

    #[test]
    fn swap_without_suspended_gates_stands_alone() {
        let gates = vec![
            in_state(GateState::Running, 0, Some(300 * M)),
            in_state(GateState::Stopping, 50 * M, None),
        ];
        assert_eq!(ps_summary(&gates), "2 gates: 300M in swap: 300M freed\n");
        assert_eq!(
            ps_summary(&[hibernated(512 * M)]),
            "1 gate: 512M hibernated on disk: 512M freed\n"
        );
        assert_eq!(
            ps_summary(&[in_state(GateState::Suspended, 64 * M, None)]),
            "1 gate: 64M suspended\n"
        );
    }

    #[test]
    fn relief_lines_say_state_limits_and_steps_by_rung() {
        let mut r = ReliefStatus {
            active: true,
            trigger: Some("memory pressure 23%".into()),
            pressure_some_avg10: Some(23.4),
            pressure_limit: Some(10.0),
            mem_available_bytes: 3 * G,
            mem_total_bytes: 24 * G,
            available_min_bytes: Some(1228 * M),
            ..ReliefStatus::default()
        };
        r.steps.insert(Rung::Hibernate, 2);
        r.freed_bytes.insert(Rung::Hibernate, 3 * G);
        r.steps.insert(Rung::Reclaim, 1);
        r.freed_bytes.insert(Rung::Reclaim, 400 * M);
        assert_eq!(
            relief_lines(&r),
            "relief: active (memory pressure 23%); pressure 23.4% of 10%; \
             available 3.0G of 24G (floor 1.2G)\n\
             relief steps: hibernate 2 (3.0G), reclaim 1 (400M)\n"
        );
    }

    #[test]
    fn calm_relief_is_one_line_and_says_what_is_off() {
        let r = ReliefStatus {
            pressure_some_avg10: Some(0.0),
            mem_available_bytes: 20 * G,
            mem_total_bytes: 24 * G,
            ..ReliefStatus::default()
        };
        assert_eq!(
            relief_lines(&r),
            "relief: calm; pressure 0.0% (limit off); available 20G of 24G (floor off)\n"
        );
        let r = ReliefStatus {
            trigger: Some("MemAvailable 4%".into()),
            pressure_limit: Some(10.0),
            ..r
        };
        assert!(relief_lines(&r)
            .starts_with("relief: calm (last: MemAvailable 4%); pressure 0.0% of 10%;"));
    }
}
