//! Table tests of the pure reconcile.
