package delegation

// Class is the kind of a rejection; each maps to one JSON-RPC code
// (-32053..-32059, SPEC §3).
type Class int

// Rejection classes, in the order checks run.
const (
	ClassMalformed Class = iota // missing or malformed
	ClassSignature              // signature or key
	ClassTime                   // expired or not yet valid
	ClassRevoked                // revoked
	ClassScope                  // scope or attenuation
	ClassAudience               // audience, sender or recipient
	ClassLimit                  // limit reached
)

// Rejection says why a chain or a call was refused. Reason is a stable
// name of the rule; Detail explains it. Neither ever holds key material.
type Rejection struct {
	Class  Class
	Reason string
	Detail string
	// JTI is the offending link's id, when there is one.
	JTI string
}

func (r *Rejection) Error() string { return r.Reason + ": " + r.Detail }

func reject(c Class, reason, detail string) *Rejection {
	return &Rejection{Class: c, Reason: reason, Detail: detail}
}

func (r *Rejection) at(l *Link) *Rejection {
	r.JTI = l.Claims.ID
	return r
}
