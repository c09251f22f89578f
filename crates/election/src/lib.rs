//! # trestle-election
//!
//! **Status: not started.** This crate has no functionality yet and exports nothing; issue #5 brings it.
//!
//! What it will be: leader election over etcd's v3 API (campaign, proclaim, resign, leader, observe), tied to a
//! lease-backed session, with a `LeaderElector` runner that cancels leader-only work the moment leadership is
//! lost, and fenced writes that a deposed leader cannot make.
