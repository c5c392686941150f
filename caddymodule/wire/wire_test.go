package wire

import (
	"encoding/json"
	"testing"
	"time"
)

func TestTimeHasAtMostSixFractionalDigits(t *testing.T) {
	in := time.Date(2026, 12, 3, 10, 11, 12, 123456789, time.FixedZone("x", 3600))
	b, err := json.Marshal(Time(in))
	if err != nil {
		t.Fatal(err)
	}
	if string(b) != `"2026-12-03T09:11:12.123456Z"` {
		t.Fatalf("got %s", b)
	}
}
