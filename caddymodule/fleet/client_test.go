package fleet

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	natsjwt "github.com/nats-io/jwt/v2"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nkeys"

	"github.com/asap-sidecar/asap-sidecar/internal/natstest"
)

// A subject another stream already claims is named when the fleet's
// streams are created, and counts as NATS being unavailable (limited
// tokens fail closed) until an operator fixes it.
func TestSetupNamesAStreamThatClaimsOurSubjects(t *testing.T) {
	for _, tc := range []struct{ subject, ours string }{
		{RevocationSubject, RevocationStream},
		{UsageSubjectPrefix + ">", UsageStream},
		{CheckpointSubjectPrefix + ">", CheckpointStream},
		{"$KV." + LimitsBucket + ".>", "KV_" + LimitsBucket},
	} {
		t.Run(tc.ours, func(t *testing.T) {
			n := natstest.Start(t)
			nc, err := nats.Connect(n.URL())
			if err != nil {
				t.Fatal(err)
			}
			defer nc.Close()
			js, _ := jetstream.New(nc)
			if _, err := js.CreateStream(context.Background(), jetstream.StreamConfig{Name: "SQUATTER", Subjects: []string{tc.subject}}); err != nil {
				t.Fatal(err)
			}
			c := connect(t, n.URL())
			err = c.setup(context.Background())
			if !errors.Is(err, ErrUnavailable) || !strings.Contains(err.Error(), strings.TrimPrefix(tc.ours, "KV_")) {
				t.Fatalf("setup beside a stream claiming %s: %v", tc.subject, err)
			}
			if _, err := c.Count(context.Background(), hashA); !errors.Is(err, ErrUnavailable) {
				t.Fatalf("count with the fleet not set up: %v", err)
			}
		})
	}
}

// A credentials file that is not one is refused at Connect, naming it.
func TestConnectRefusesBadCredentials(t *testing.T) {
	n := natstest.Start(t)
	creds := filepath.Join(t.TempDir(), "nats.creds")
	if err := os.WriteFile(creds, []byte("not a creds file"), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := Connect(Options{URL: n.URL(), Credentials: creds})
	if err == nil {
		c.Close()
		t.Fatal("connected with a credentials file that holds no JWT")
	}
	if !strings.Contains(err.Error(), creds) || !strings.Contains(err.Error(), "no user JWT") {
		t.Fatalf("error does not name the file and the problem: %v", err)
	}
	if _, err := Connect(Options{URL: n.URL(), Credentials: creds + ".missing"}); err == nil || !strings.Contains(err.Error(), ".missing") {
		t.Fatalf("a missing credentials file: %v", err)
	}
	// A real .creds file (a user JWT and seed) passes the check; the
	// server here has no accounts, so connecting is NATS's business.
	seed, jwt := userCreds(t)
	good := filepath.Join(t.TempDir(), "user.creds")
	if err := os.WriteFile(good, []byte("-----BEGIN NATS USER JWT-----\n"+jwt+"\n------END NATS USER JWT------\n\n-----BEGIN USER NKEY SEED-----\n"+seed+"\n------END USER NKEY SEED------\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := checkCredentials(good); err != nil {
		t.Fatalf("a well-formed .creds file: %v", err)
	}
}

// userCreds makes a user NKey seed and a user JWT signed by an account key.
func userCreds(t *testing.T) (seed, token string) {
	t.Helper()
	user, _ := nkeys.CreateUser()
	s, _ := user.Seed()
	pub, _ := user.PublicKey()
	acct, _ := nkeys.CreateAccount()
	claims := natsjwt.NewUserClaims(pub)
	token, err := claims.Encode(acct)
	if err != nil {
		t.Fatal(err)
	}
	return string(s), token
}

// Counts cannot be read while NATS is down.
func TestCountWhileNATSIsDown(t *testing.T) {
	n := natstest.Start(t)
	c := connect(t, n.URL())
	if _, err := c.Take(context.Background(), hashA, 3, inAnHour); err != nil {
		t.Fatal(err)
	}
	n.Stop()
	if _, err := c.Count(context.Background(), hashA); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("count with NATS down: %v", err)
	}
}
