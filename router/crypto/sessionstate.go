package crypto

// SessionState is SessionInfo.State: where the session with one peer stands.
type SessionState string

// Session states.
const (
	SessionNone        SessionState = "none"        // no session, no handshake in flight
	SessionHandshake   SessionState = "handshake"   // a handshake in flight, none established
	SessionEstablished SessionState = "established" // a session to send with
)
