// Package auth decides who may call the control plane: admin callers by
// bearer token and role, data planes by their client certificate, new data
// planes by a join token. It runs as a gRPC tap handle, before any request
// message is read, so an unauthenticated caller costs the control plane
// no memory for its message.
package auth

import (
	"fmt"

	meridianv1 "github.com/meridian-gw/meridian/proto/meridian/v1"
)

// Role is what an admin principal may do. Each role includes the ones
// below it.
type Role int

// Roles, weakest first.
const (
	RoleNone Role = iota
	RoleViewer
	RoleOperator
	RoleAdmin
)

// String is the role's name as the tokens file spells it.
func (r Role) String() string {
	switch r {
	case RoleViewer:
		return "viewer"
	case RoleOperator:
		return "operator"
	case RoleAdmin:
		return "admin"
	}
	return "none"
}

// ParseRole reads viewer, operator or admin.
func ParseRole(s string) (Role, error) {
	for _, r := range []Role{RoleViewer, RoleOperator, RoleAdmin} {
		if s == r.String() {
			return r, nil
		}
	}
	return RoleNone, fmt.Errorf("unknown role %q (want viewer, operator or admin)", s)
}

// adminRoles is the least role each AdminService method needs. A method
// missing here is refused to everyone (TestEveryAdminMethodHasARole keeps
// the table complete).
var adminRoles = map[string]Role{
	meridianv1.AdminService_Get_FullMethodName:             RoleViewer,
	meridianv1.AdminService_List_FullMethodName:            RoleViewer,
	meridianv1.AdminService_Diff_FullMethodName:            RoleViewer,
	meridianv1.AdminService_History_FullMethodName:         RoleViewer,
	meridianv1.AdminService_ListDataplanes_FullMethodName:  RoleViewer,
	meridianv1.AdminService_ListAudit_FullMethodName:       RoleViewer,
	meridianv1.AdminService_Apply_FullMethodName:           RoleOperator,
	meridianv1.AdminService_Delete_FullMethodName:          RoleOperator,
	meridianv1.AdminService_Rollback_FullMethodName:        RoleOperator,
	meridianv1.AdminService_CreateJoinToken_FullMethodName: RoleAdmin,
	meridianv1.AdminService_ListJoinTokens_FullMethodName:  RoleAdmin,
	meridianv1.AdminService_RevokeJoinToken_FullMethodName: RoleAdmin,
	meridianv1.AdminService_RevokeDataplane_FullMethodName: RoleAdmin,
}

// RequiredRole returns the role an AdminService method needs, and false
// for a method that is not an admin method.
func RequiredRole(method string) (Role, bool) {
	r, ok := adminRoles[method]
	return r, ok
}

// Mutating reports whether an admin method changes state (and so is
// always audited).
func Mutating(method string) bool {
	r, ok := adminRoles[method]
	if !ok {
		return false
	}
	switch method {
	case meridianv1.AdminService_Diff_FullMethodName, meridianv1.AdminService_ListJoinTokens_FullMethodName:
		return false
	}
	return r >= RoleOperator
}
