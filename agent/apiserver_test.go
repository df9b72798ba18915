package agent

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/weftnet/weft/api"
)

// A bare agent (nothing started) answers every request with JSON and a
// stable error code, never a panic or a hang.
func TestAPIBeforeStartAnswersNotReady(t *testing.T) {
	a := &Agent{cfg: validConfig(), blocker: "starting"}
	h := a.apiHandler()
	for _, tc := range []struct {
		method, path, body string
		status             int
		code               string
	}{
		{"GET", api.PathStatus, "", 200, ""},
		{"GET", api.PathPeers, "", 200, ""},
		{"GET", api.PathIPAM, "", 503, api.CodeNotReady},
		{"POST", api.PathAllocate, `{"container_id":"c1","ifname":"eth0"}`, 503, api.CodeNotReady},
		{"POST", api.PathAllocate, `{"container_id":"c1"}`, 400, api.CodeBadInput},
		{"POST", api.PathAllocate, `{"container_id":"c1","ifname":"eth0","bogus":1}`, 400, api.CodeBadInput},
		{"POST", api.PathAllocate, `{"container_id":"c1","ifname":"eth0"} trailing`, 400, api.CodeBadInput},
		{"POST", api.PathAllocate, `{"container_id":"weft:host","ifname":"weft"}`, 400, api.CodeBadInput},
		{"POST", api.PathConnect, `{"peers":["h:1"]}`, 503, api.CodeNotReady},
		{"POST", api.PathRelease, `{"container_id":""}`, 400, api.CodeBadInput},
	} {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(tc.method, tc.path, strings.NewReader(tc.body)))
		if rec.Code != tc.status {
			t.Errorf("%s %s %s: status %d, want %d (%s)", tc.method, tc.path, tc.body, rec.Code, tc.status, rec.Body)
			continue
		}
		if tc.code != "" {
			var e api.Error
			if err := json.Unmarshal(rec.Body.Bytes(), &e); err != nil || e.Code != tc.code {
				t.Errorf("%s %s: body %s, want code %s", tc.method, tc.path, rec.Body, tc.code)
			}
		}
	}
}

// FuzzAPIRequests feeds arbitrary bodies to every POST endpoint of an agent
// that has not started: each must answer with JSON and a 4xx/5xx code.
func FuzzAPIRequests(f *testing.F) {
	for _, s := range []string{`{}`, `{"container_id":"c","ifname":"eth0"}`, `{"peers":["a","b:1"]}`,
		`{"valid":[{"container_id":"c","ifname":"eth0"}]}`, `{"name":"x"}`, `[`, "\x00", `{"container_id":1}`} {
		f.Add(s)
	}
	a := &Agent{cfg: validConfig(), blocker: "starting"}
	h := a.apiHandler()
	paths := []string{api.PathAllocate, api.PathClaim, api.PathRelease, api.PathGC, api.PathConnect, api.PathForget, api.PathRmpeer}
	f.Fuzz(func(t *testing.T, body string) {
		for _, p := range paths {
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, p, bytes.NewBufferString(body)))
			if rec.Code < 400 {
				t.Fatalf("%s accepted %q with %d before start", p, body, rec.Code)
			}
			if !json.Valid(rec.Body.Bytes()) {
				t.Fatalf("%s answered non-JSON %q", p, rec.Body)
			}
		}
	})
}
