//! lab-emu
