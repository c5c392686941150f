package storage

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
)

// The two halves of scripts/powerloss.sh, which runs the writer on a
// filesystem it can cut power to (a loop device whose backing file is made
// immutable) and the verifier on what the cut left. Both skip unless the
// script sets their environment.

// TestPowerLossWriter commits strict records pl<n> from several goroutines
// until killed, appending n to ASAP_POWERLOSS_ACKS (on a disk that keeps
// power) once Wait has returned for it.
func TestPowerLossWriter(t *testing.T) {
	dir, acks := os.Getenv("ASAP_POWERLOSS_WRITE"), os.Getenv("ASAP_POWERLOSS_ACKS")
	if dir == "" || acks == "" {
		t.Skip("run by scripts/powerloss.sh")
	}
	f, err := os.OpenFile(acks, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	db, err := Open(Options{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	var seq atomic.Uint64
	var mu sync.Mutex
	var wg sync.WaitGroup
	for w := 0; w < 16; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				n := seq.Add(1)
				err := db.Commit(context.Background(), Strict, func(tx *Tx) error {
					tx.Set([]byte("pl"+strconv.FormatUint(n, 10)), make([]byte, 200))
					return nil
				})
				if err != nil {
					return // the cut: writes fail from here on
				}
				mu.Lock()
				fmt.Fprintln(f, n) // one write(2), no user-space buffer
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	select {} // wait for kill -9
}

// TestPowerLossVerify opens what the cut left and checks that every
// acknowledged record is there.
func TestPowerLossVerify(t *testing.T) {
	dir, acks := os.Getenv("ASAP_POWERLOSS_VERIFY"), os.Getenv("ASAP_POWERLOSS_ACKS")
	if dir == "" || acks == "" {
		t.Skip("run by scripts/powerloss.sh")
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
	acked, lost := 0, 0
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		acked++
		if _, err := get(t, db, []byte("pl"+sc.Text())); err != nil {
			if lost < 5 {
				t.Errorf("acknowledged strict record pl%s lost: %v", sc.Text(), err)
			}
			lost++
		}
	}
	stored := 0
	db.View(func(r *Reader) error {
		return r.Scan([]byte("pl"), false, func(k, v []byte) (bool, error) { stored++; return true, nil })
	})
	t.Logf("%d acknowledged, %d lost, %d stored", acked, lost, stored)
	if lost > 0 {
		t.Fatalf("%d of %d acknowledged strict records lost", lost, acked)
	}
}
