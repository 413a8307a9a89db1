"""Errors of the reading workflow's data layer (under ``cxr_common.errors.CxrTriageError``).

    CxrTriageError
    ├── AccountError              users and tokens
    │   ├── InvalidNameError      a user or token name outside [A-Za-z0-9._@-]{1,64}
    │   ├── UserExistsError
    │   ├── UnknownUserError
    │   ├── WrongPasswordError    a password change with the wrong current password
    │   ├── TokenExistsError      an active token already has that name
    │   └── UnknownTokenError     no active token has that name
    └── ReadingError              read state and answers
        ├── StudyNotFoundError
        ├── StudyClaimedError     another user's claim is active (``holder`` says whose)
        ├── StudyAlreadyReadError
        └── InvalidAnswerError    a finding, note, score or model version out of range

Messages name users, tokens and Study Instance UIDs only: never a password, a token,
a note or patient data.
"""

from __future__ import annotations

from cxr_common.errors import CxrTriageError


class AccountError(CxrTriageError):
    """A user or token operation was refused."""


class InvalidNameError(AccountError):
    pass


class UserExistsError(AccountError):
    pass


class UnknownUserError(AccountError):
    pass


class WrongPasswordError(AccountError):
    pass


class TokenExistsError(AccountError):
    pass


class UnknownTokenError(AccountError):
    pass


class ReadingError(CxrTriageError):
    """A read-state change or an answer was refused."""


class StudyNotFoundError(ReadingError):
    pass


class StudyClaimedError(ReadingError):
    def __init__(self, study_instance_uid: str, holder: str) -> None:
        super().__init__(f"study {study_instance_uid} is in progress by {holder}")
        self.study_instance_uid = study_instance_uid
        self.holder = holder


class StudyAlreadyReadError(ReadingError):
    def __init__(self, study_instance_uid: str, read_by: str) -> None:
        super().__init__(f"study {study_instance_uid} was already read by {read_by}")
        self.study_instance_uid = study_instance_uid
        self.read_by = read_by


class InvalidAnswerError(ReadingError):
    """An answer with a value outside its range (the message says which field)."""
