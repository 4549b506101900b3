//! Shared test support. The black-box tests and their harness live in `tests/blackbox/`;
//! [`linearizability`] checks the histories that the cluster fault tests record.

pub mod linearizability;
