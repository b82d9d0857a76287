#![allow(dead_code)] // each test binary uses a different part of the support code

pub mod golden;
pub mod guest;
pub mod pty;
pub mod sandbox;
pub mod vm;
