package api

// Version of this build; the Makefile sets it with
// -ldflags "-X github.com/weftnet/weft/api.Version=...".
var Version = "0.1.0-dev"
