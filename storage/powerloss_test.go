package storage

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// The two halves of scripts/powerloss.sh, which runs the writer on a
// filesystem it can cut power to (a loop device whose backing file is made
// immutable) and the verifier on what the cut left. Both skip unless the
// script sets their environment. ASAP_POWERLOSS_MODE is strict (default)
// or relaxed.

// powerLossFlush is the relaxed writer's flush interval: short, so a
// cut 1-3 s in has relaxed writes both older and younger than it.
const powerLossFlush = 200 * time.Millisecond

func powerLossMode() Durability {
	if os.Getenv("ASAP_POWERLOSS_MODE") == "relaxed" {
		return Relaxed
	}
	return Strict
}

// TestPowerLossWriter commits records pl<n> from several goroutines until
// killed, appending "n unix-nanos" to ASAP_POWERLOSS_ACKS (on a disk that
// keeps power) once Wait has returned for it.
func TestPowerLossWriter(t *testing.T) {
	dir, acks := os.Getenv("ASAP_POWERLOSS_WRITE"), os.Getenv("ASAP_POWERLOSS_ACKS")
	if dir == "" || acks == "" {
		t.Skip("run by scripts/powerloss.sh")
	}
	f, err := os.OpenFile(acks, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	db, err := Open(Options{Dir: dir, FlushInterval: powerLossFlush})
	if err != nil {
		t.Fatal(err)
	}
	mode := powerLossMode()
	var seq atomic.Uint64
	var mu sync.Mutex
	var wg sync.WaitGroup
	for w := 0; w < 16; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				n := seq.Add(1)
				err := db.Commit(context.Background(), mode, func(tx *Tx) error {
					tx.Set([]byte("pl"+strconv.FormatUint(n, 10)), make([]byte, 200))
					return nil
				})
				if err != nil {
					return // the cut: writes fail from here on
				}
				mu.Lock()
				fmt.Fprintln(f, n, time.Now().UnixNano()) // one write(2), no user-space buffer
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	select {} // wait for kill -9
}

// TestPowerLossVerify opens what the cut left and checks that every
// acknowledged strict record is there; in relaxed mode, every record
// acknowledged more than a flush interval (plus the sync's own time)
// before the cut, whose time ASAP_POWERLOSS_CUT gives in Unix nanoseconds.
func TestPowerLossVerify(t *testing.T) {
	dir, acks := os.Getenv("ASAP_POWERLOSS_VERIFY"), os.Getenv("ASAP_POWERLOSS_ACKS")
	if dir == "" || acks == "" {
		t.Skip("run by scripts/powerloss.sh")
	}
	mode := powerLossMode()
	var mustBefore int64 = 1<<63 - 1 // strict: every acknowledged record
	if mode == Relaxed {
		cut, err := strconv.ParseInt(os.Getenv("ASAP_POWERLOSS_CUT"), 10, 64)
		if err != nil {
			t.Fatalf("ASAP_POWERLOSS_CUT: %v", err)
		}
		// Synced at the first flush after its commit; a sync takes
		// milliseconds, given 100 here for a loaded machine.
		mustBefore = cut - int64(powerLossFlush) - int64(100*time.Millisecond)
	}
	db, err := Open(Options{Dir: dir})
	if err != nil {
		t.Fatalf("database does not open after the power cut: %v", err)
	}
	defer db.Close()
	f, err := os.Open(acks)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	acked, lost, young, youngLost := 0, 0, 0, 0
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		n, at, _ := strings.Cut(sc.Text(), " ")
		ackedAt, err := strconv.ParseInt(at, 10, 64)
		if err != nil {
			t.Fatalf("ack line %q: %v", sc.Text(), err)
		}
		_, err = get(t, db, []byte("pl"+n))
		if ackedAt >= mustBefore {
			// Relaxed, inside the last flush interval: may be lost.
			young++
			if err != nil {
				youngLost++
			}
			continue
		}
		acked++
		if err != nil {
			if lost < 5 {
				t.Errorf("acknowledged %v record pl%s lost: %v", mode, n, err)
			}
			lost++
		}
	}
	stored := 0
	db.View(func(r *Reader) error {
		return r.Scan([]byte("pl"), false, func(k, v []byte) (bool, error) { stored++; return true, nil })
	})
	t.Logf("%v: %d acknowledged that must survive, %d lost; %d acknowledged in the last flush interval, %d of them lost; %d stored",
		mode, acked, lost, young, youngLost, stored)
	if lost > 0 {
		t.Fatalf("%d of %d acknowledged %v records lost", lost, acked, mode)
	}
}
