package caddymodule

import "testing"

// The size of a checkpoint is its note's second line; a note without one
// is refused rather than published with size 0.
func TestCheckpointSize(t *testing.T) {
	if n, err := checkpointSize([]byte("asap/demo\n42\nroothash\n\n— sig\n")); err != nil || n != 42 {
		t.Fatalf("size %d, %v", n, err)
	}
	for _, bad := range []string{"asap/demo", "asap/demo\n", "asap/demo\nforty-two\nroot\n"} {
		if _, err := checkpointSize([]byte(bad)); err == nil {
			t.Errorf("checkpointSize(%q) took it", bad)
		}
	}
}
