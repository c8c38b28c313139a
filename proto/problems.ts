import type * as v from 'valibot';

/** One failed check of a request, as `issues` of a 400 response lists it. */
export interface ValidationIssue {
  path: string;
  message: string;
  expected?: string;
  received?: string;
}

/** Body of every error response (`application/problem+json`). */
export interface Problem {
  type: string;
  title: string;
  status: number;
  detail: string;
  request_id: string;
  issues?: ValidationIssue[];
  conflicting_route_id?: string;
  oldest_revision?: number;
}

/** Turns valibot issues into flat issues with dotted paths such as `backends.0.port`. */
export function toValidationIssues(issues: readonly v.BaseIssue<unknown>[]): ValidationIssue[] {
  return issues.map((issue) => {
    const path = (issue.path ?? []).map((item) => String(item.key)).join('.');
    const result: ValidationIssue = { path, message: issue.message };
    if (issue.expected !== null) result.expected = issue.expected;
    if (issue.received !== undefined) result.received = issue.received;
    return result;
  });
}
