//! cgroup2 access over plain files (being written).

/// A cgroup limit: "max" is a value of its own, never a magic number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Limit {
    Max,
    Value(u64),
}

impl Limit {
    /// The text the kernel expects in memory.max, pids.max, ...
    pub fn to_kernel(self) -> String {
        match self {
            Limit::Max => "max".to_string(),
            Limit::Value(v) => v.to_string(),
        }
    }
}
