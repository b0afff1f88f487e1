//! fedgate with Ejabberd (Debian's package): every scenario, both directions.

crate::scenarios::every_scenario!(crate::peer::Kind::Ejabberd, "ej");
