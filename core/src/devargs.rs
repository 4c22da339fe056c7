//! Device arguments (`bus:name,key=value`), parsed and validated against a driver's declared keys.
