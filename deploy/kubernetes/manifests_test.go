// Package kubernetes_test checks that the manifests in this directory
// agree with each other and with the sidecar: the Caddyfile in the
// ConfigMap is adapted by the real Caddy adapter with the sidecar's
// modules, and every port, path and volume it names is checked against
// the Deployment, the Service and the volumes that hold them.
package kubernetes_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	_ "github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	_ "github.com/caddyserver/caddy/v2/modules/standard"
	"go.yaml.in/yaml/v3"

	_ "github.com/asap-sidecar/asap-sidecar/caddymodule"
)

const (
	sidecarName = "asap-sidecar"
	agentName   = "agent"
	sidecarUID  = 65532
)

// --- the parts of the Kubernetes objects the checks read -----------------

type meta struct {
	Name        string            `yaml:"name"`
	Labels      map[string]string `yaml:"labels"`
	Annotations map[string]string `yaml:"annotations"`
}

type object struct {
	APIVersion string            `yaml:"apiVersion"`
	Kind       string            `yaml:"kind"`
	Metadata   meta              `yaml:"metadata"`
	Data       map[string]string `yaml:"data"`
	StringData map[string]string `yaml:"stringData"`
	Spec       yaml.Node         `yaml:"spec"`
}

type deploymentSpec struct {
	Replicas *int `yaml:"replicas"`
	Strategy struct {
		Type string `yaml:"type"`
	} `yaml:"strategy"`
	Selector struct {
		MatchLabels map[string]string `yaml:"matchLabels"`
	} `yaml:"selector"`
	Template struct {
		Metadata meta    `yaml:"metadata"`
		Spec     podSpec `yaml:"spec"`
	} `yaml:"template"`
}

type podSpec struct {
	AutomountServiceAccountToken *bool           `yaml:"automountServiceAccountToken"`
	ShareProcessNamespace        *bool           `yaml:"shareProcessNamespace"`
	HostNetwork                  bool            `yaml:"hostNetwork"`
	SecurityContext              securityContext `yaml:"securityContext"`
	Containers                   []container     `yaml:"containers"`
	InitContainers               []container     `yaml:"initContainers"`
	Volumes                      []volume        `yaml:"volumes"`
}

type securityContext struct {
	RunAsNonRoot             *bool  `yaml:"runAsNonRoot"`
	RunAsUser                *int64 `yaml:"runAsUser"`
	ReadOnlyRootFilesystem   *bool  `yaml:"readOnlyRootFilesystem"`
	AllowPrivilegeEscalation *bool  `yaml:"allowPrivilegeEscalation"`
	Privileged               bool   `yaml:"privileged"`
	Capabilities             struct {
		Add  []string `yaml:"add"`
		Drop []string `yaml:"drop"`
	} `yaml:"capabilities"`
}

type probe struct {
	HTTPGet *struct {
		Path string `yaml:"path"`
		Port any    `yaml:"port"`
	} `yaml:"httpGet"`
}

type container struct {
	Name    string   `yaml:"name"`
	Image   string   `yaml:"image"`
	Command []string `yaml:"command"`
	Args    []string `yaml:"args"`
	Env     []struct {
		Name  string `yaml:"name"`
		Value string `yaml:"value"`
	} `yaml:"env"`
	Ports []struct {
		Name          string `yaml:"name"`
		ContainerPort int    `yaml:"containerPort"`
	} `yaml:"ports"`
	LivenessProbe  *probe `yaml:"livenessProbe"`
	ReadinessProbe *probe `yaml:"readinessProbe"`
	Resources      struct {
		Requests map[string]string `yaml:"requests"`
		Limits   map[string]string `yaml:"limits"`
	} `yaml:"resources"`
	SecurityContext securityContext `yaml:"securityContext"`
	VolumeMounts    []struct {
		Name      string `yaml:"name"`
		MountPath string `yaml:"mountPath"`
		SubPath   string `yaml:"subPath"`
		ReadOnly  bool   `yaml:"readOnly"`
	} `yaml:"volumeMounts"`
}

type volume struct {
	Name      string    `yaml:"name"`
	EmptyDir  *struct{} `yaml:"emptyDir"`
	ConfigMap *struct {
		Name string `yaml:"name"`
	} `yaml:"configMap"`
	Secret *struct {
		SecretName string `yaml:"secretName"`
	} `yaml:"secret"`
	PersistentVolumeClaim *struct {
		ClaimName string `yaml:"claimName"`
	} `yaml:"persistentVolumeClaim"`
	HostPath *struct{} `yaml:"hostPath"`
}

type serviceSpec struct {
	Selector map[string]string `yaml:"selector"`
	Ports    []struct {
		Name       string `yaml:"name"`
		Port       int    `yaml:"port"`
		TargetPort any    `yaml:"targetPort"`
	} `yaml:"ports"`
}

// manifests is every object the kustomization lists, by kind.
type manifests struct {
	objects    []object
	deployment deploymentSpec
	depMeta    meta
	service    serviceSpec
	configMaps map[string]object
	secrets    map[string]object
	pvcs       map[string]object
}

func load(t *testing.T) *manifests {
	t.Helper()
	var kust struct {
		Resources []string `yaml:"resources"`
	}
	b, err := os.ReadFile("kustomization.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(b, &kust); err != nil {
		t.Fatalf("kustomization.yaml: %v", err)
	}
	// Every manifest in the directory is listed, or `kubectl apply -k`
	// would leave it out.
	files, _ := filepath.Glob("*.yaml")
	listed := map[string]bool{}
	for _, r := range kust.Resources {
		listed[r] = true
	}
	for _, f := range files {
		if f != "kustomization.yaml" && !listed[f] {
			t.Errorf("%s is not listed in kustomization.yaml resources", f)
		}
	}
	m := &manifests{configMaps: map[string]object{}, secrets: map[string]object{}, pvcs: map[string]object{}}
	deployments, services := 0, 0
	for _, r := range kust.Resources {
		b, err := os.ReadFile(r)
		if err != nil {
			t.Fatalf("kustomization.yaml lists %s: %v", r, err)
		}
		dec := yaml.NewDecoder(bytes.NewReader(b))
		for {
			var o object
			err := dec.Decode(&o)
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				t.Fatalf("%s: %v", r, err)
			}
			if o.Kind == "" {
				continue
			}
			m.objects = append(m.objects, o)
			switch o.Kind {
			case "Deployment":
				deployments++
				m.depMeta = o.Metadata
				if err := o.Spec.Decode(&m.deployment); err != nil {
					t.Fatalf("%s: deployment spec: %v", r, err)
				}
			case "Service":
				services++
				if err := o.Spec.Decode(&m.service); err != nil {
					t.Fatalf("%s: service spec: %v", r, err)
				}
			case "ConfigMap":
				m.configMaps[o.Metadata.Name] = o
			case "Secret":
				m.secrets[o.Metadata.Name] = o
			case "PersistentVolumeClaim":
				m.pvcs[o.Metadata.Name] = o
			}
		}
	}
	if deployments != 1 || services != 1 {
		t.Fatalf("want one Deployment and one Service, have %d and %d", deployments, services)
	}
	return m
}

func (m *manifests) container(t *testing.T, name string) *container {
	t.Helper()
	for i, c := range m.deployment.Template.Spec.Containers {
		if c.Name == name {
			return &m.deployment.Template.Spec.Containers[i]
		}
	}
	t.Fatalf("the pod has no container %q", name)
	return nil
}

func (m *manifests) volume(t *testing.T, name string) volume {
	t.Helper()
	for _, v := range m.deployment.Template.Spec.Volumes {
		if v.Name == name {
			return v
		}
	}
	t.Fatalf("the pod has no volume %q", name)
	return volume{}
}

// mountOf is the volume mount of c holding file (the deepest one), or
// false.
func mountOf(c *container, file string) (name, mountPath string, readOnly, ok bool) {
	file = path.Clean(file)
	for _, vm := range c.VolumeMounts {
		mp := path.Clean(vm.MountPath)
		if (file == mp || strings.HasPrefix(file, mp+"/")) && len(mp) > len(mountPath) {
			name, mountPath, readOnly, ok = vm.Name, mp, vm.ReadOnly, true
		}
	}
	return
}

// port resolves a probe's or Service's port (a name or a number) among
// c's container ports; 0 when c has no such port.
func port(c *container, p any) int {
	switch v := p.(type) {
	case int:
		for _, cp := range c.Ports {
			if cp.ContainerPort == v {
				return v
			}
		}
	case string:
		if n, err := strconv.Atoi(v); err == nil {
			return port(c, n)
		}
		for _, cp := range c.Ports {
			if cp.Name == v {
				return cp.ContainerPort
			}
		}
	}
	return 0
}

func (c *container) env(name string) string {
	for _, e := range c.Env {
		if e.Name == name {
			return e.Value
		}
	}
	return ""
}

// --- the adapted Caddyfile -----------------------------------------------

type server struct {
	ports    []int
	handlers []map[string]any // every handler of the server, nested ones too
	routes   []any
}

type caddyConfig struct {
	admin   string
	servers map[string]*server
}

// adapt runs the Caddyfile through Caddy's adapter, with the sidecar's
// modules registered, as `asap-caddy adapt` would.
func adapt(t *testing.T, caddyfile, filename string) caddyConfig {
	t.Helper()
	out, warnings, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(caddyfile), map[string]any{"filename": filename})
	if err != nil {
		t.Fatalf("the ConfigMap's Caddyfile does not adapt: %v", err)
	}
	for _, w := range warnings {
		t.Errorf("adapter warning: %s:%d: %s", w.File, w.Line, w.Message)
	}
	var raw struct {
		Admin struct {
			Listen string `json:"listen"`
		} `json:"admin"`
		Apps struct {
			HTTP struct {
				Servers map[string]struct {
					Listen []string `json:"listen"`
					Routes []any    `json:"routes"`
				} `json:"servers"`
			} `json:"http"`
		} `json:"apps"`
	}
	if err := json.Unmarshal(out, &raw); err != nil {
		t.Fatal(err)
	}
	cfg := caddyConfig{admin: raw.Admin.Listen, servers: map[string]*server{}}
	for name, s := range raw.Apps.HTTP.Servers {
		srv := &server{routes: s.Routes}
		for _, l := range s.Listen {
			na, err := caddy.ParseNetworkAddress(l)
			if err != nil {
				t.Fatalf("server %s listens on %q: %v", name, l, err)
			}
			for p := na.StartPort; p <= na.EndPort; p++ {
				srv.ports = append(srv.ports, int(p))
			}
		}
		walkHandlers(s.Routes, func(h map[string]any) { srv.handlers = append(srv.handlers, h) })
		cfg.servers[name] = srv
	}
	return cfg
}

// walkHandlers calls fn for every object with a "handler" key under v.
func walkHandlers(v any, fn func(map[string]any)) {
	switch x := v.(type) {
	case map[string]any:
		if _, ok := x["handler"].(string); ok {
			fn(x)
		}
		for _, e := range x {
			walkHandlers(e, fn)
		}
	case []any:
		for _, e := range x {
			walkHandlers(e, fn)
		}
	}
}

func (s *server) handler(name string) map[string]any {
	for _, h := range s.handlers {
		if h["handler"] == name {
			return h
		}
	}
	return nil
}

// answersItself says whether a route of s answers GET p with a static
// 2xx/3xx response, without reaching reverse_proxy.
func (s *server) answersItself(p string) bool {
	found := false
	var walk func(v any)
	walk = func(v any) {
		switch x := v.(type) {
		case map[string]any:
			if match, ok := x["match"].([]any); ok {
				if hs, ok := x["handle"].([]any); ok && matchesPath(match, p) {
					for _, h := range hs {
						if hm, ok := h.(map[string]any); ok && hm["handler"] == "static_response" {
							status := 200
							if st, ok := hm["status_code"]; ok {
								status, _ = strconv.Atoi(fmt.Sprint(st))
							}
							found = found || (status >= 200 && status < 400)
						}
					}
				}
			}
			for _, e := range x {
				walk(e)
			}
		case []any:
			for _, e := range x {
				walk(e)
			}
		}
	}
	walk(s.routes)
	return found
}

func matchesPath(match []any, p string) bool {
	for _, m := range match {
		mm, _ := m.(map[string]any)
		paths, _ := mm["path"].([]any)
		for _, x := range paths {
			if ok, _ := path.Match(fmt.Sprint(x), p); ok {
				return true
			}
		}
	}
	return false
}

// --- the checks ----------------------------------------------------------

func TestKubernetesManifestsAgree(t *testing.T) {
	m := load(t)
	pod := m.deployment.Template.Spec

	// One pod: the agent and its sidecar.
	if r := m.deployment.Replicas; r == nil || *r != 1 {
		t.Errorf("replicas must be 1 (several need fleet mode and a database each), have %v", r)
	}
	if m.deployment.Strategy.Type != "Recreate" {
		t.Errorf("strategy %q: with a ReadWriteOnce volume and Badger's directory lock the old pod must stop first (Recreate)", m.deployment.Strategy.Type)
	}
	if len(pod.Containers) != 2 {
		t.Fatalf("the pod must hold the agent and the sidecar, has %d containers", len(pod.Containers))
	}
	for k, v := range m.deployment.Selector.MatchLabels {
		if m.deployment.Template.Metadata.Labels[k] != v {
			t.Errorf("the Deployment's selector %s=%s does not select its own pods", k, v)
		}
	}
	sc, ag := m.container(t, sidecarName), m.container(t, agentName)
	if !strings.HasPrefix(sc.Image, "asap-sidecar:") {
		t.Errorf("sidecar image %q", sc.Image)
	}
	asapPort := port(sc, "asap")
	if asapPort == 0 {
		t.Fatal(`the sidecar declares no container port named "asap"`)
	}

	// The command runs the binary where the image keeps it: the image
	// (FROM scratch) has no PATH lookup to fall back on.
	if entry := dockerfileEntrypoint(t); len(sc.Command) == 0 || sc.Command[0] != entry {
		t.Errorf("the sidecar's command %q does not start with the image's ENTRYPOINT binary %q", sc.Command, entry)
	}

	// The Caddyfile: the sidecar runs the one in the ConfigMap.
	configFile := ""
	for i, a := range sc.Command {
		if a == "--config" && i+1 < len(sc.Command) {
			configFile = sc.Command[i+1]
		}
	}
	if configFile == "" {
		t.Fatalf("the sidecar's command %q names no --config", sc.Command)
	}
	volName, mp, _, ok := mountOf(sc, configFile)
	if !ok {
		t.Fatalf("--config %s is on no volume of the sidecar", configFile)
	}
	cmVol := m.volume(t, volName)
	if cmVol.ConfigMap == nil {
		t.Fatalf("--config %s is on volume %q, which is no ConfigMap", configFile, volName)
	}
	cm, ok := m.configMaps[cmVol.ConfigMap.Name]
	if !ok {
		t.Fatalf("volume %q names ConfigMap %q, which is not among the manifests", volName, cmVol.ConfigMap.Name)
	}
	key := strings.TrimPrefix(path.Clean(configFile), mp+"/")
	caddyfile, ok := cm.Data[key]
	if !ok {
		t.Fatalf("ConfigMap %s has no key %q for --config %s", cm.Metadata.Name, key, configFile)
	}
	cfg := adapt(t, caddyfile, configFile)

	// The site with the asap handler listens on the sidecar's port, and
	// proxies to the agent on the pod's loopback.
	var site *server
	for _, s := range cfg.servers {
		if s.handler("asap") != nil {
			if site != nil {
				t.Fatal("two servers with an asap handler")
			}
			site = s
		}
	}
	if site == nil {
		t.Fatal("no server of the Caddyfile has an asap handler")
	}
	if len(site.ports) != 1 || site.ports[0] != asapPort {
		t.Errorf("the asap site listens on %v, the sidecar's container port asap is %d", site.ports, asapPort)
	}
	asap := site.handler("asap")
	rp := site.handler("reverse_proxy")
	if rp == nil {
		t.Fatal("the asap site has no reverse_proxy")
	}
	ups, _ := rp["upstreams"].([]any)
	if len(ups) != 1 {
		t.Fatalf("reverse_proxy upstreams %v: want the agent alone", ups)
	}
	dial := fmt.Sprint(ups[0].(map[string]any)["dial"])
	if host, _, _ := strings.Cut(dial, ":"); host != "127.0.0.1" && host != "localhost" {
		t.Errorf("reverse_proxy dials %s: the agent must be on the pod's loopback", dial)
	}
	if got := ag.env("LISTEN_ADDR"); got != dial {
		t.Errorf("the agent listens on LISTEN_ADDR=%q, the sidecar proxies to %s", got, dial)
	}
	if args := strings.Join(ag.Args, " "); !strings.Contains(args, dial) {
		t.Errorf("the agent's args %q do not name %s", args, dial)
	}
	if len(ag.Ports) != 0 {
		t.Errorf("the agent declares ports %v: nothing should point at it but the sidecar", ag.Ports)
	}

	// Every other server (metrics) is on a port the sidecar declares.
	for name, s := range cfg.servers {
		for _, p := range s.ports {
			if port(sc, p) == 0 {
				t.Errorf("server %s listens on %d, which the sidecar container does not declare", name, p)
			}
		}
	}
	if ann := m.deployment.Template.Metadata.Annotations["prometheus.io/port"]; ann != "" {
		n, _ := strconv.Atoi(ann)
		var metrics *server
		for _, s := range cfg.servers {
			if s.handler("metrics") != nil {
				metrics = s
			}
		}
		if metrics == nil || len(metrics.ports) != 1 || metrics.ports[0] != n {
			t.Errorf("prometheus.io/port %s is not the port of the Caddyfile's metrics site", ann)
		}
	}

	// The admin endpoint: a unix socket in a volume only the sidecar
	// mounts, so the agent cannot reconfigure its guard.
	admin, err := caddy.ParseNetworkAddress(cfg.admin)
	if err != nil || !admin.IsUnixNetwork() {
		t.Fatalf("admin %q: want a unix socket (on localhost:2019 the agent could unload its guard)", cfg.admin)
	}
	socket, _, _ := strings.Cut(admin.Host, "|") // unix//path|0600
	adminVol, _, ro, ok := mountOf(sc, socket)
	switch {
	case !ok:
		t.Errorf("admin socket %s is on no volume of the sidecar", socket)
	case m.volume(t, adminVol).EmptyDir == nil:
		t.Errorf("admin socket %s is on volume %q, want an emptyDir of the sidecar's own", socket, adminVol)
	case ro:
		t.Errorf("admin socket %s is on a read-only mount", socket)
	}
	for _, c := range append(append([]container{}, pod.Containers...), pod.InitContainers...) {
		if c.Name == sidecarName {
			continue
		}
		for _, vm := range c.VolumeMounts {
			if vm.Name == adminVol {
				t.Errorf("container %s mounts %q, the admin socket's volume", c.Name, adminVol)
			}
		}
	}
	if pod.ShareProcessNamespace != nil && *pod.ShareProcessNamespace {
		t.Error("shareProcessNamespace: the agent would reach the sidecar's files through /proc")
	}
	if pod.HostNetwork {
		t.Error("hostNetwork: the agent's loopback port would be the node's")
	}

	// Storage on the PVC, the key from the Secret.
	storage, _ := asap["storage"].(string)
	if v, _, ro, ok := mountOf(sc, storage); !ok {
		t.Errorf("storage %q is on no volume of the sidecar", storage)
	} else if pvc := m.volume(t, v).PersistentVolumeClaim; pvc == nil || ro {
		t.Errorf("storage %s is on volume %q, want a writable PersistentVolumeClaim", storage, v)
	} else if _, ok := m.pvcs[pvc.ClaimName]; !ok {
		t.Errorf("volume %q claims %q, which is not among the manifests", v, pvc.ClaimName)
	}
	if d := asap["durability"]; d != nil && d != "strict" {
		t.Errorf("durability %v, want strict", d)
	}
	keyFile, _ := asap["key"].(string)
	if v, mp, _, ok := mountOf(sc, keyFile); !ok {
		t.Errorf("key %q is on no volume of the sidecar", keyFile)
	} else if sec := m.volume(t, v).Secret; sec == nil {
		t.Errorf("key %s is on volume %q, want a Secret", keyFile, v)
	} else if s, ok := m.secrets[sec.SecretName]; !ok {
		t.Errorf("volume %q names Secret %q, which is not among the manifests", v, sec.SecretName)
	} else {
		k := strings.TrimPrefix(path.Clean(keyFile), mp+"/")
		if _, ok := s.StringData[k]; !ok {
			if _, ok := s.Data[k]; !ok {
				t.Errorf("Secret %s has no key %q for key %s", s.Metadata.Name, k, keyFile)
			}
		}
	}
	for _, vm := range ag.VolumeMounts {
		if v := m.volume(t, vm.Name); v.Secret != nil || v.PersistentVolumeClaim != nil {
			t.Errorf("the agent mounts %q: the key and the database are the sidecar's alone", vm.Name)
		}
	}

	// Probes reach the sidecar; liveness a route it answers itself.
	for kind, p := range map[string]*probe{"liveness": sc.LivenessProbe, "readiness": sc.ReadinessProbe} {
		if p == nil || p.HTTPGet == nil {
			t.Errorf("the sidecar has no httpGet %s probe", kind)
			continue
		}
		if port(sc, p.HTTPGet.Port) != asapPort {
			t.Errorf("%s probe port %v is not the sidecar's port asap (%d)", kind, p.HTTPGet.Port, asapPort)
		}
	}
	if p := sc.LivenessProbe; p != nil && p.HTTPGet != nil && !site.answersItself(p.HTTPGet.Path) {
		t.Errorf("liveness path %s is not answered by the sidecar itself (a respond route): an agent outage would restart the sidecar", p.HTTPGet.Path)
	}

	// The Service sends clients to the sidecar, never to the agent.
	for k, v := range m.service.Selector {
		if m.deployment.Template.Metadata.Labels[k] != v {
			t.Errorf("the Service's selector %s=%s does not select the pod", k, v)
		}
	}
	asapServed := false
	for _, p := range m.service.Ports {
		target := p.TargetPort
		if target == nil {
			target = p.Port
		}
		n := port(sc, target)
		if n == 0 {
			t.Errorf("Service port %s targets %v, which is not a port of the sidecar container", p.Name, target)
		}
		if n == asapPort {
			asapServed = true
		}
		if fmt.Sprint(target) == dial[strings.LastIndexByte(dial, ':')+1:] {
			t.Errorf("Service port %s targets the agent's port %v", p.Name, target)
		}
	}
	if !asapServed {
		t.Errorf("no Service port targets the sidecar's port asap (%d)", asapPort)
	}

	// Resources and hardening.
	for _, c := range []*container{sc, ag} {
		if c.Resources.Requests["cpu"] == "" || c.Resources.Requests["memory"] == "" {
			t.Errorf("container %s has no cpu and memory requests", c.Name)
		}
		if c.Resources.Limits["memory"] == "" {
			t.Errorf("container %s has no memory limit", c.Name)
		}
	}
	s := sc.SecurityContext
	nonRoot := s.RunAsNonRoot
	if nonRoot == nil {
		nonRoot = pod.SecurityContext.RunAsNonRoot
	}
	uid := s.RunAsUser
	if uid == nil {
		uid = pod.SecurityContext.RunAsUser
	}
	switch {
	case nonRoot == nil || !*nonRoot:
		t.Error("the sidecar must run with runAsNonRoot")
	case uid == nil || *uid != sidecarUID:
		t.Errorf("the sidecar runs as uid %v, want %d (the image's)", uid, sidecarUID)
	case s.ReadOnlyRootFilesystem == nil || !*s.ReadOnlyRootFilesystem:
		t.Error("the sidecar's root file system must be read-only")
	case s.AllowPrivilegeEscalation == nil || *s.AllowPrivilegeEscalation:
		t.Error("the sidecar must set allowPrivilegeEscalation: false")
	case len(s.Capabilities.Drop) != 1 || s.Capabilities.Drop[0] != "ALL" || len(s.Capabilities.Add) != 0 || s.Privileged:
		t.Errorf("the sidecar must drop ALL capabilities and add none, has %+v", s.Capabilities)
	}
	if u := ag.SecurityContext.RunAsUser; u != nil && uid != nil && *u == *uid {
		t.Errorf("the agent runs as the sidecar's uid %d", *u)
	}
	if a := pod.AutomountServiceAccountToken; a == nil || *a {
		t.Error("automountServiceAccountToken must be false: the agent runs tools")
	}
	// Caddy's data directory must be writable on a read-only root.
	if d := sc.env("XDG_DATA_HOME"); d == "" {
		t.Error("XDG_DATA_HOME is not set: Caddy's data directory would be on the read-only root")
	} else if _, _, ro, ok := mountOf(sc, d); !ok || ro {
		t.Errorf("XDG_DATA_HOME %s is not on a writable volume", d)
	}
}

// dockerfileEntrypoint is the binary the repository's Dockerfile starts.
func dockerfileEntrypoint(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile("../../Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(strings.TrimSpace(line), "ENTRYPOINT "); ok {
			var argv []string
			if err := json.Unmarshal([]byte(rest), &argv); err != nil || len(argv) == 0 {
				t.Fatalf("Dockerfile ENTRYPOINT %s is not a JSON array", rest)
			}
			return argv[0]
		}
	}
	t.Fatal("the Dockerfile has no ENTRYPOINT")
	return ""
}
