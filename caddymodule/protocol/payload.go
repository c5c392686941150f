package protocol

// PayloadType is a payload type in canonical form: lower case with every
// non-alphanumeric character dropped, so "task.request", "TaskRequest" and
// "task_request" are all "taskrequest".
type PayloadType string

// The known payload types, canonical.
const (
	TypeTaskRequest      PayloadType = "taskrequest"
	TypeTaskResponse     PayloadType = "taskresponse"
	TypeTaskUpdate       PayloadType = "taskupdate"
	TypeTaskCancel       PayloadType = "taskcancel"
	TypeTaskStream       PayloadType = "taskstream"
	TypeMessageSend      PayloadType = "messagesend"
	TypeStateQuery       PayloadType = "statequery"
	TypeStateRestore     PayloadType = "staterestore"
	TypeArtifactNotify   PayloadType = "artifactnotify"
	TypeMCPToolCall      PayloadType = "mcptoolcall"
	TypeMCPToolResult    PayloadType = "mcptoolresult"
	TypeMCPResourceFetch PayloadType = "mcpresourcefetch"
	TypeMCPResourceData  PayloadType = "mcpresourcedata"
	TypeMessageAck       PayloadType = "messageack"
)

// dotted names the known types in the form the reference writes them.
var dotted = map[PayloadType]string{
	TypeTaskRequest:      "task.request",
	TypeTaskResponse:     "task.response",
	TypeTaskUpdate:       "task.update",
	TypeTaskCancel:       "task.cancel",
	TypeTaskStream:       "task.stream",
	TypeMessageSend:      "message.send",
	TypeStateQuery:       "state.query",
	TypeStateRestore:     "state.restore",
	TypeArtifactNotify:   "artifact.notify",
	TypeMCPToolCall:      "mcp.tool_call",
	TypeMCPToolResult:    "mcp.tool_result",
	TypeMCPResourceFetch: "mcp.resource_fetch",
	TypeMCPResourceData:  "mcp.resource_data",
	TypeMessageAck:       "message.ack",
}

// NormalizeType canonicalises a payload type string.
func NormalizeType(s string) PayloadType {
	b := make([]byte, 0, len(s))
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= '0' && c <= '9':
			b = append(b, c)
		case c >= 'A' && c <= 'Z':
			b = append(b, c+'a'-'A')
		}
	}
	return PayloadType(b)
}

// Known reports whether t is one of the ASAP payload types.
func (t PayloadType) Known() bool { _, ok := dotted[t]; return ok }

// String is the dotted name of a known type ("task.request"), or "unknown".
// Metrics and records use it so that label values stay bounded.
func (t PayloadType) String() string {
	if d, ok := dotted[t]; ok {
		return d
	}
	return "unknown"
}

// NeedsCorrelation reports whether envelopes of this type answer another
// envelope and must name it in correlation_id.
func (t PayloadType) NeedsCorrelation() bool {
	switch t {
	case TypeTaskResponse, TypeTaskStream, TypeMCPToolResult, TypeMCPResourceData:
		return true
	}
	return false
}

// Task statuses of a task.response.
const (
	StatusSubmitted     = "submitted"
	StatusWorking       = "working"
	StatusCompleted     = "completed"
	StatusFailed        = "failed"
	StatusCancelled     = "cancelled"
	StatusInputRequired = "input_required"
)
