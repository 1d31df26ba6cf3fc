"""tickmesh tools: cli, tap, ctl, bench, replay, export, train, fake exchange."""
