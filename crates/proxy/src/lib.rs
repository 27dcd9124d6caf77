//! Sluice's data plane (being written).
